"""The recommended recipe: its recipe rounds and the cross-validation rounds 8-20 that judged its members."""
