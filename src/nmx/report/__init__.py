"""Tables and reports for people; the CLI prints them."""
