# tests of chaiderm.losses
