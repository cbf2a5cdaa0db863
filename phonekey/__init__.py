"""The `phonekey` console script: a thin dispatcher over each package's subcommands."""
