from gateway.launcher import main

main()
