from segrt.cli import main

main()
