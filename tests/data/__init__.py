# tests of chaiderm.data
