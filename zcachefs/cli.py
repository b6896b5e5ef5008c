"""The `zcachefs` command line: `zcachefs [-f] [-o OPTIONS] SOURCE MOUNTPOINT`.

Errors are one line on stderr and a non-zero exit status, never a traceback. The
argument order of mount.fuse3 (`zcachefs SOURCE MOUNTPOINT -o opts`) is accepted.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, client
from .options import OptionError, options_help, parse_options, read_options_file


def build_parser() -> argparse.ArgumentParser:
    parser = client.Parser(
        prog="zcachefs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mount SOURCE at MOUNTPOINT (they may be the same directory) as a "
                    "passthrough FUSE filesystem.",
        epilog="zcachefs options (-o name=value; generic fstab flags such as defaults, "
               "nofail, _netdev, x-systemd.* are ignored; FUSE options such as allow_other, "
               "default_permissions, ro, fsname= pass through):\n" + options_help()
               + "\n\n" + client.SUMMARY,
    )
    parser.add_argument("source", metavar="SOURCE", help="directory to pass through")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="where to mount it")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        metavar="OPTIONS", help="comma-separated mount options")
    parser.add_argument("--options-file", metavar="FILE",
                        help="read mount options from FILE (one name[=value] per line, "
                             "as in -o; a missing file means no options)")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground and log to stderr")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"zcachefs {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in client.SUBCOMMANDS:  # zcachefs stat|top|set|drop: a client
        return client.main(argv)
    args = build_parser().parse_args(argv)
    groups = list(args.options)
    if args.options_file:
        try:
            with open(args.options_file, encoding="utf-8") as f:
                groups = read_options_file(f.read()) + groups
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            print(f"zcachefs: cannot read {args.options_file}: {exc}", file=sys.stderr)
            return 2
    from .memory import usable_ram

    ram = usable_ram()
    try:
        opts = parse_options(groups, ram)
    except OptionError as exc:
        print(f"zcachefs: {exc}", file=sys.stderr)
        return 2
    if args.debug and not opts.debug:
        import dataclasses

        opts = dataclasses.replace(opts, debug=True)
    from .mount import MountError, run  # pyfuse3 is loaded only to mount

    try:
        return run(args.source, args.mountpoint, opts, args.foreground, ram)
    except MountError as exc:
        print(f"zcachefs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
