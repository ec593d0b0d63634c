from gencli.cli import main

main()
