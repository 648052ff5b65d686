# tests of chaiderm.index
