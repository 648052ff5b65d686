"""Evidence maps that find the lesion: map settings scored on lesion masks."""
