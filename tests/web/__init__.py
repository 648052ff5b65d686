# tests of chaiderm.web
