# tests of chaiderm.storage
