"""The ``geounet`` command line: one thin module per subcommand."""
