# tests of chaiderm.training
