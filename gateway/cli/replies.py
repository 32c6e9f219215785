"""`gateway letters reply|approve|return`: replies to a letter's sender under approval, through
the same service as the web register (gateway.services.replies)."""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli.state import State, as_option, by_option, fail, pass_state, principal

if TYPE_CHECKING:
    from gateway.services.people import Principal
    from gateway.services.replies import Replies


@click.command("reply")
@click.argument("number")
@click.option("--text", help="The reply's text (replaces the draft's).")
@click.option("--text-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The reply's text from a UTF-8 file.")
@click.option("--attach", "attach", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Attach a file (repeat for more).")
@click.option("--submit", is_flag=True, help="Submit the draft for approval: its chain starts.")
@click.option("--send", is_flag=True,
              help="Send the approved reply (refused before every approver of its chain approved; a reply by "
                   "post: the registry office records it posted).")
@click.option("--note", default="", help="With --send for a reply by post: where and how it was posted.")
@as_option
@by_option
@pass_state
def reply(state: State, number: str, text: str | None, text_file: Path | None, attach: tuple[Path, ...],
          submit: bool, send: bool, note: str, as_login: str | None, by: str | None) -> None:
    """Draft or change the reply to a letter's sender, submit it for approval, or send it once approved;
    without options, show where its reply stands."""
    from gateway.registry.replies import NewReplyAttachment
    from gateway.services.access import Refused
    from gateway.services.replies import Replies

    replies = Replies(state.config, state.registry())
    who = principal(state, as_login, by)
    if text is not None and text_file is not None:
        raise click.BadParameter("either --text or --text-file", param_hint="--text")
    body = text_file.read_text(encoding="utf-8") if text_file is not None else text
    try:
        if body is not None or attach:
            files = [NewReplyAttachment(p.name, mimetypes.guess_type(p.name)[0] or "application/octet-stream",
                                        p.read_bytes()) for p in attach]
            if body is None:  # attachments only: the draft's text stays
                current = replies.panel(who, replies.letter_of(who, number)).reply
                body = current.text if current is not None else ""
            draft = replies.draft(who, number, text=body, attach=files)
            click.echo(f"{number}: draft reply {draft} saved")
        if submit:
            chain = replies.submit(who, number)
            click.echo(f"{number}: submitted for approval by {' -> '.join(chain)}")
            state.wake_daemon()
        if send:
            replies.send(who, number, note=note)
            click.echo(f"{number}: reply recorded as posted; the letter is answered")
    except LookupError as exc:
        fail(str(exc))
    except Refused as exc:
        fail(str(exc))
    if body is None and not (submit or send):
        _show(replies, who, number)


def _show(replies: Replies, who: Principal, number: str) -> None:
    try:
        panel = replies.read(who, number, address="cli")
    except LookupError as exc:
        fail(str(exc))
    if panel.reply is None:
        click.echo(f"{number}: no reply")
        return
    r = panel.reply
    click.echo(f"{number}: reply {r.id}, {r.status} (round {r.round}, rule {panel.rule})")
    for step in panel.steps:
        decided = f" by {step.decision.approver}: {step.decision.comment}" if step.decision else ""
        click.echo(f"  {step.position + 1}. {step.role}: {step.state}{decided}")
    for a in panel.attachments:
        click.echo(f"  attachment: {a.filename} ({a.size} bytes)")
    click.echo("")
    click.echo(r.text)


def _decide(state: State, number: str, comment: str, as_login: str | None, by: str | None, approve: bool) -> None:
    from gateway.services.access import Refused
    from gateway.services.replies import Replies

    replies = Replies(state.config, state.registry())
    try:
        who = principal(state, as_login, by)
        if approve:
            status = replies.approve(who, number, comment=comment)
        else:
            status = replies.give_back(who, number, comment=comment)
    except LookupError as exc:
        fail(str(exc))
    except Refused as exc:
        fail(str(exc))
    click.echo({"pending": f"{number}: approved; the next step waits",
                "returned": f"{number}: returned to the handler",
                "sent": f"{number}: approved by the whole chain; the reply is on its way to the sender",
                "to-post": f"{number}: approved by the whole chain; the registry office posts it (no e-mail "
                           "address)"}.get(status, f"{number}: {status}"))
    state.wake_daemon()


@click.command("approve")
@click.argument("number")
@click.option("--comment", default="", help="Recorded with the approval.")
@as_option
@by_option
@pass_state
def approve(state: State, number: str, comment: str, as_login: str | None, by: str | None) -> None:
    """Approve the step of a letter's reply waiting for you (--as LOGIN: an approval is a person's).
    The last step's approval sends it."""
    _decide(state, number, comment, as_login, by, True)


@click.command("return")
@click.argument("number")
@click.option("--comment", required=True, help="What is to change: the handler reads it.")
@as_option
@by_option
@pass_state
def give_back(state: State, number: str, comment: str, as_login: str | None, by: str | None) -> None:
    """Return a letter's reply to its handler with a comment; their next submission starts the chain again."""
    _decide(state, number, comment, as_login, by, False)


COMMANDS = (reply, approve, give_back)
