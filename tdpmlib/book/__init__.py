"""The book's presentation: how tables and figures are shown, and the paired verdict phrases."""
