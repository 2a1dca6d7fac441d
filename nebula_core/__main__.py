from nebula_core.main import main

main()
