"""A chart may name an event ``send``: the spec still decides each event by its own name.

python-statemachine puts events on the chart as attributes, so an event called ``send``
shadows the chart's ``send()`` method; the spec used to call that attribute for every event it
decided, which fired ``send`` and blamed whichever event it had been asked about.
"""

from __future__ import annotations

from statemachine import State, StateChart

from pullwake.machines import Activity, ChartSpec, Decision


class Mail(StateChart):  # type: ignore[type-arg]
    """A draft that is sent, and edited again."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    draft = State(initial=True)
    sent = State()

    send = draft.to(sent)
    edit = sent.to(draft)


def mail_spec() -> ChartSpec:
    return ChartSpec(
        Mail,
        activities={"sent": (Activity("deliver"),)},
        ignored={"draft": frozenset({"edit"}), "sent": frozenset({"send"})},
        name="mail",
    )


def test_a_chart_with_an_event_named_send_is_accepted_and_decided_by_name() -> None:
    spec = mail_spec()
    assert {(d.source, d.event): d for d in spec.table()} == {
        (("draft",), "send"): Decision(
            "transition", ("draft",), "send", ("sent",), ("draft",), ("sent",), (), ("deliver",)
        ),
        (("draft",), "edit"): Decision("ignored", ("draft",), "edit", ("draft",)),
        (("sent",), "edit"): Decision(
            "transition", ("sent",), "edit", ("draft",), ("sent",), ("draft",), ("deliver",), ()
        ),
        (("sent",), "send"): Decision("ignored", ("sent",), "send", ("sent",)),
    }
