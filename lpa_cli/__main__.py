from lpa_cli.app import main

main()
