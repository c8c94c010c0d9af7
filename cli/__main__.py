from thresher.cli.app import main

main()
