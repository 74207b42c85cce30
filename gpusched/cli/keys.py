"""``gpusched keys``: make the daemon's CURVE key pair, or a tenant's."""
from __future__ import annotations


def add_parser(sub) -> None:
    ky = sub.add_parser("keys", help="make the daemon's CURVE key pair",
                        description="Write daemon.key_secret (owner-only; for 'gpusched daemon "
                        "--curve-secret') and daemon.key (public; for clients: server_key= or "
                        "GPUSCHED_SERVER_KEY).")
    ky.add_argument("--out", default=".", help="folder for the two files")
    ky.add_argument("--force", action="store_true", help="replace existing keys")
    ky.add_argument("--client", metavar="TENANT", help="make TENANT's key pair instead "
                    "(TENANT.key_secret for its clients: client_key= or GPUSCHED_CLIENT_KEY; "
                    "TENANT.key goes in the daemon's --tenant-keys file)")


def run(args) -> int:
    from scheduler_daemon.transport.keys import make_keys
    if args.client:
        secret, public = make_keys(args.out, args.force, args.client)
        print(f"wrote {secret} (the tenant's clients only: GPUSCHED_CLIENT_KEY={secret})")
        print(f"wrote {public} (in the daemon's --tenant-keys file: {args.client}: {public})")
        return 0
    secret, public = make_keys(args.out, args.force)
    print(f"wrote {secret} (keep it secret: gpusched daemon --curve-secret {secret})")
    print(f"wrote {public} (give it to clients: GPUSCHED_SERVER_KEY={public})")
    return 0
