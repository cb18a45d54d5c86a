"""One module per external system. Resources import nothing from the flows."""
