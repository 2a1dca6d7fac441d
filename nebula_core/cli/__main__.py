from nebula_core.cli import main

main()
