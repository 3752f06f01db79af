"""`python -m client` == `emotion-client`."""

from client.cli import main

raise SystemExit(main())
