from voicepool.cli import main

main()
