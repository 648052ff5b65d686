"""Web interfaces: the evidence viewer (``chaiderm serve``) and the group annotator (``chaiderm annotate``)."""
