# tests of chaiderm.cli
