"""``chassis secret …``: values encrypted to recipient keys, kept beside the
ledger (``chassis.secret_store``, ``guides/secrets.md``).

No command prints a value: ``set`` and ``rotate`` read it from a file, an
environment variable or stdin (without echo on a terminal), and the others
show what the ledger says about it.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from chassis.cli.app import App, at_option, pass_app, table

if TYPE_CHECKING:
    from chassis.secret_store import RecipientChange, SecretStore

VALUE_SOURCES = """\b
The value comes from --from-file, --from-env, or stdin (typed without echo
on a terminal, twice; piped otherwise); trailing newlines are dropped and an
empty value is refused. It is never printed or recorded in the ledger: the
ledger gets its recipients and a keyed digest, the ciphertext a side table."""


@click.group(
    "secret",
    epilog="""\b
Examples:
  chassis secret set db-password --from-file ./db-password.txt --reason 'new database'
  printf %s "$TOKEN" | chassis secret set api-token --recipient ci-bot --ttl 90d
  chassis secret list --json
  chassis secret rotate db-password --from-env NEW_DB_PASSWORD --reason 'quarterly'
  chassis secret grant db-password bob --reason 'joins the on-call rota'""",
)
def secret_group() -> None:
    """Secrets encrypted to recipient keys, stored beside the ledger.

    Each version's value is encrypted (AES-256-GCM) under its own data key,
    sealed to each recipient's key; the ledger signs who the recipients are
    and a keyed digest of the value, never the value. See guides/secrets.md.
    """


def _value_options(command: Any) -> Any:
    command = click.option(
        "--from-env",
        "from_env",
        metavar="VAR",
        default=None,
        help="Read the value from environment variable VAR.",
    )(command)
    return click.option(
        "--from-file",
        "from_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Read the value from file F (UTF-8).",
        metavar="F",
    )(command)


def _write_options(command: Any) -> Any:
    command = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(
        command
    )
    command = click.option("--reason", default="", metavar="TEXT", help="Recorded with it.")(
        command
    )
    command = click.option(
        "--ttl",
        default=None,
        metavar="DURATION",
        help="Rotate within this long (12h, 30d, 1h30m): shown as expired after.",
    )(command)
    return click.option(
        "--recipient",
        "recipients",
        multiple=True,
        metavar="KEY",
        help="A key (name or id) that may decrypt it; repeat for more.",
    )(command)


@secret_group.command(
    "set",
    epilog=VALUE_SOURCES
    + """

\b
Without --recipient the value is encrypted to every active trusted key
holding 'operator'. The acting key must hold 'operator' (exit 6).
Exit status: 0 stored; 2 bad name, value or --ttl; 3 value source unreadable;
5 unknown recipient key; 6 not an operator; 9 the secret exists (rotate it).
Example: chassis secret set db-password --from-file ./db-password.txt --recipient ci-bot""",
)
@click.argument("name")
@_value_options
@_write_options
@pass_app
def set_command(
    app: App,
    name: str,
    from_file: Path | None,
    from_env: str | None,
    recipients: tuple[str, ...],
    ttl: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Store a new secret NAME, encrypted to its recipients."""
    store, version = _write(app, "set", name, from_file, from_env, recipients, ttl, reason)
    _written(app, store, name, f"secret {name} version {version} stored", as_json)


@secret_group.command(
    "rotate",
    epilog=VALUE_SOURCES
    + """

\b
Without --recipient the new version goes to the current version's
recipients that are still trusted; without --ttl it keeps the current ttl.
Older versions stay readable by their own recipients.
Exit status: 0 stored; 2 bad value or --ttl; 3 value source unreadable;
5 unknown recipient key; 6 not an operator; 10 no such secret.
Example: chassis secret rotate db-password --from-env NEW_DB_PASSWORD --reason quarterly""",
)
@click.argument("name")
@_value_options
@_write_options
@pass_app
def rotate_command(
    app: App,
    name: str,
    from_file: Path | None,
    from_env: str | None,
    recipients: tuple[str, ...],
    ttl: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Store a new value of secret NAME as its next version."""
    store, version = _write(app, "rotate", name, from_file, from_env, recipients, ttl, reason)
    _written(app, store, name, f"secret {name} rotated to version {version}", as_json)


@secret_group.command(
    "list",
    epilog="Exit status: 0 listed.\nExample: chassis secret list --json",
)
@click.option("--all", "include_removed", is_flag=True, help="Removed secrets too.")
@click.option("--json", "as_json", is_flag=True, help="Print the secrets as JSON.")
@pass_app
def list_command(app: App, include_removed: bool, as_json: bool) -> None:
    """Every secret: version, recipients, who set it when, ttl (never values)."""
    data = _store(app).all(include_removed=include_removed)
    rows = [
        [
            d["name"],
            str(d["version"]) + (" (removed)" if d["removed"] else ""),
            ", ".join(r["name"] for r in d["recipients"]),
            d["set_by"]["name"],
            d["set_at"],
            _expiry(d),
        ]
        for d in data
    ]
    app.emit(
        data,
        as_json=as_json,
        human=lambda: (
            table(rows, ["NAME", "VERSION", "RECIPIENTS", "SET BY", "SET AT", "EXPIRES"])
            if rows
            else click.echo("no secrets")
        ),
    )


@secret_group.command(
    "show",
    epilog="Exit status: 0 shown; 2 bad name; 10 no such secret.\n"
    "Example: chassis secret show db-password --json",
)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@pass_app
def show_command(app: App, name: str, as_json: bool) -> None:
    """What the ledger says about secret NAME (never its value)."""
    data = _store(app).metadata(name)
    app.emit(data, as_json=as_json, human=lambda: _show(data))


@secret_group.command(
    "verify",
    epilog="""\b
Decrypts the version with the acting key and checks it against the ledger's
signed recipients and digest, as a deploy would; prints 'ok', never the value.
Exit status: 0 it decrypts and matches; 5 the acting key is not a recipient;
8 the stored bytes do not verify (tampered, moved or missing); 10 no such
secret or version.
Example: chassis --key ci-bot secret verify db-password --version 2""",
)
@click.argument("name")
@click.option(
    "--version", "version", type=click.IntRange(min=1), default=None, help="Default: the current."
)
@pass_app
def verify_command(app: App, name: str, version: int | None) -> None:
    """Check that the acting key can read secret NAME and that it is intact."""
    store = _store(app)
    store.keypair = app.signer()
    number = version if version is not None else store.current_version(name)
    store.reveal(name, number)
    click.echo(
        f"secret {name} version {number}: ok (decrypts for {store.keypair.name}, digest matches)"
    )


@secret_group.command(
    "rm",
    epilog="""\b
Records the removal and deletes every stored version's ciphertext. Setting
the name again starts at the next version number.
Exit status: 0 removed; 6 not an operator; 9 no reason given; 10 no such secret.
Example: chassis secret rm old-token --reason 'service retired'""",
)
@click.argument("name")
@click.option("--reason", required=True, metavar="TEXT", help="Recorded with the removal.")
@pass_app
def rm_command(app: App, name: str, reason: str) -> None:
    """Remove secret NAME: record it removed and delete its ciphertexts."""
    _store(app, signing=True).remove(name, reason)
    click.echo(f"secret {name} removed")


@secret_group.command(
    "grant",
    epilog="""\b
Seals the data key of every live version of NAME that the acting key can
decrypt to KEY, and records each version's new recipients, so that KEY can
also deploy and roll back to older versions. Versions the acting key is not
a recipient of are listed in one warning line and left alone. The acting
key must hold 'operator'.
Exit status: 0 granted (some versions may be listed as skipped); 5 the
acting key is a recipient of none of them, or KEY is unknown; 6 not an
operator; 8 a stored ciphertext does not verify (nothing was recorded);
9 KEY is already a recipient of every version, or revoked; 10 no such secret.
Example: chassis secret grant db-password bob --reason 'joins the on-call rota'""",
)
@click.argument("name")
@click.argument("key")
@click.option("--reason", default="", metavar="TEXT", help="Recorded with the change.")
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@pass_app
def grant_command(app: App, name: str, key: str, reason: str, as_json: bool) -> None:
    """Let KEY decrypt every version of secret NAME the acting key can."""
    store = _store(app, signing=True)
    change = store.grant(name, key, reason)
    _changed(app, store, change, "is now a recipient of", as_json)


@secret_group.command(
    "revoke-recipient",
    epilog="""\b
Drops KEY's sealed data key from every live version of NAME and records
each version's new recipients. It cannot un-leak: a value or data key KEY
read before stays known to it, and its private key still opens any copy of
an old wrap. Rotate the secret (and change the credential at its source).
A version KEY is the only recipient of keeps it (listed in a warning);
the current version refuses (remove the secret instead).
Exit status: 0 revoked; 2 no reason; 5 unknown KEY; 6 not an operator;
9 KEY is not a recipient, or the last one of the current version;
10 no such secret.
Example: chassis secret revoke-recipient db-password bob --reason 'left the team'""",
)
@click.argument("name")
@click.argument("key")
@click.option("--reason", required=True, metavar="TEXT", help="Recorded with the change.")
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@pass_app
def revoke_recipient_command(app: App, name: str, key: str, reason: str, as_json: bool) -> None:
    """Stop KEY from decrypting any version of secret NAME through Chassis."""
    store = _store(app, signing=True)
    change = store.revoke_recipient(name, key, reason)
    _changed(app, store, change, "is no longer a recipient of", as_json)


@secret_group.command(
    "leases",
    epilog="""\b
A version is materialized on a host while an installation's active plan
there references it (its env file). Its lease ends ttl after the version
was set: rotate and redeploy before then. An expired one says what to do:
redeploy (when a newer version is valid) or rotate and redeploy, or run
'chassis reconcile APP --env ENV --repair', which stops the component,
deletes its env files (recorded) and so removes the row. --at TIME shows
what will have expired by TIME. Read from the verified ledger; the hosts
are not asked (reconcile also looks for copies in retained releases).
Exit status: 0.
Examples:
  chassis secret leases --json
  chassis secret leases --at 2030-01-31T00:00:00Z""",
)
@at_option
@click.option("--json", "as_json", is_flag=True, help="Print the leases as JSON.")
@pass_app
def leases_command(app: App, at: datetime | None, as_json: bool) -> None:
    """Where each secret version is materialized, and when its lease expires."""
    from chassis.secret_leases import leases

    rows = leases(app.ledger(), at or datetime.now(UTC))
    table_rows = [
        [
            r["secret"],
            str(r["version"]),
            f"{r['app']}/{r['environment']}",
            r["host"],
            f"{r['component']}.{r['env']}",
            r["expires"] or "never",
            "EXPIRED" if r["expired"] else ("current" if r["current"] else "superseded"),
        ]
        for r in rows
    ]

    def human() -> None:
        if not table_rows:
            click.echo("no secret from the store is materialized on any host")
            return
        table(table_rows, ["SECRET", "VERSION", "INSTALLATION", "HOST", "ENV", "EXPIRES", ""])
        for r in rows:
            if r["action"]:
                click.echo(
                    f"{r['secret']}@{r['version']} on {r['host']} ({r['component']}) "
                    f"expired at {r['expires']}: {r['action']}"
                )

    app.emit(rows, as_json=as_json, human=human)


def _write(
    app: App,
    how: str,
    name: str,
    from_file: Path | None,
    from_env: str | None,
    recipients: tuple[str, ...],
    ttl: str | None,
    reason: str,
) -> tuple[SecretStore, int]:
    """Read and check the value, then ``set`` or ``rotate`` it; the new version."""
    from chassis.secret_store import check_value, parse_ttl

    ttl_s = parse_ttl(ttl) if ttl is not None else None
    value = _read_value(from_file, from_env)
    check_value(value)
    store = _store(app, signing=True)
    write = store.set if how == "set" else store.rotate
    version = write(name, value, recipients=list(recipients) or None, ttl_s=ttl_s, reason=reason)
    return store, version


def _store(app: App, *, signing: bool = False) -> SecretStore:
    from chassis.secret_store import SecretStore

    ledger = app.ledger(signing=signing)
    return SecretStore(ledger, ledger.signer)


def _read_value(from_file: Path | None, from_env: str | None) -> str:
    """The value from its one source, trailing newlines dropped."""
    from chassis.secret_store import SecretStoreError

    if from_file is not None and from_env is not None:
        raise click.UsageError("give at most one of --from-file and --from-env")
    if from_file is not None:
        try:
            data = from_file.read_bytes()
        except OSError as e:
            raise SecretStoreError(f"--from-file: cannot read {from_file}: {e.strerror}") from None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise click.BadParameter(
                f"{from_file} is not UTF-8 text", param_hint="--from-file"
            ) from None
    elif from_env is not None:
        found = os.environ.get(from_env)
        if found is None:
            raise SecretStoreError(f"--from-env: environment variable {from_env} is not set")
        text = found
    elif sys.stdin.isatty():
        text = click.prompt(
            "Value", hide_input=True, confirmation_prompt=True, err=True, show_default=False
        )
    else:
        text = sys.stdin.read()
    return text.rstrip("\r\n")


def _changed(
    app: App, store: SecretStore, change: RecipientChange, what: str, as_json: bool
) -> None:
    """A recipient change: one line naming the versions, one warning line per
    kind of version left alone (stderr)."""
    acting = store.keypair.name if store.keypair is not None else "the acting key"
    for line in change.warnings(acting):
        app.note(f"warning: {line}")
    versions = ", ".join(map(str, change.versions))
    app.emit(
        change.to_dict(),
        as_json=as_json,
        human=lambda: click.echo(
            f"secret {change.name}: {change.key_name} {what} "
            f"version{'s' if len(change.versions) > 1 else ''} {versions}"
        ),
    )


def _written(app: App, store: SecretStore, name: str, line: str, as_json: bool) -> None:
    data = store.metadata(name)
    app.emit(data, as_json=as_json, human=lambda: click.echo(line))


def _duration(seconds: int) -> str:
    """``90061`` → ``1d1h1m1s``."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _expiry(data: dict[str, Any]) -> str:
    if data["expires"] is None:
        return "-"
    return f"{data['expires']} (expired)" if data["expired"] else str(data["expires"])


def _show(data: dict[str, Any]) -> None:
    recipients = ", ".join(f"{r['name']} ({r['keyid'][:16]})" for r in data["recipients"])
    lines = [
        ("name", data["name"]),
        ("version", str(data["version"])),
        ("recipients", recipients),
        ("set by", f"{data['set_by']['name']} ({data['set_by']['keyid'][:16]})"),
        ("set at", data["set_at"]),
        ("digest", f"hmac-sha256 {data['digest']}"),
        ("ttl", "-" if data["ttl_s"] is None else _duration(int(data["ttl_s"]))),
        ("expires", _expiry(data)),
        ("reason", data["reason"] or "-"),
    ]
    if data["removed"]:
        lines.append(("removed", str(data["removed_reason"])))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {value}")
