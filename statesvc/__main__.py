from statesvc.cli import main

main()
