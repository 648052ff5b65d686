# tests of chaiderm.evaluation
