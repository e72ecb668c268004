from sellmyimages.cli import main

main()
