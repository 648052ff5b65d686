# tests of chaiderm.models
