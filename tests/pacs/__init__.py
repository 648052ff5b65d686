# tests of chaiderm.pacs
