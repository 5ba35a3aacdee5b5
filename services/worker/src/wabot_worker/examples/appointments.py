"""An appointment-confirmation flow, as a handler to copy and adapt.

``WORKER_HANDLER=wabot_worker.examples.appointments:handle``

The clinic's reminder (sent by its own system) asks the patient to confirm.
The conversation, kept per chat in ``message.state`` (stored sealed with the
message, in the same transaction as the replies):

* any first message → the options (1 confirm, 2 reschedule, 3 cancel);
* ``1`` → confirmed; ``2`` → asks for a preferred day, and the next message
  is taken as that day; ``3`` → cancelled; anything else → the options again;
* ``menu`` (or ``oi``, ``olá``) starts over.

Messages sent by the clinic itself (``from_me``) are never answered.
"""

from __future__ import annotations

import unicodedata

from wabot_worker.handler import IncomingMessage, Reply

OPTIONS = (
    "Olá! Sobre a sua consulta, responda com o número:\n1 - Confirmar\n2 - Remarcar\n3 - Cancelar"
)
CONFIRMED = "Consulta confirmada. Até lá!"
ASK_DAY = "Qual dia e horário você prefere para remarcar?"
RESCHEDULE_NOTED = "Anotado: {day}. A recepção vai confirmar o novo horário com você."
CANCELLED = "Consulta cancelada. Se precisar, é só chamar."
GREETINGS = frozenset({"menu", "oi", "ola", "bom dia", "boa tarde", "boa noite"})


def _normalized(text: str | None) -> str:
    plain = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    return " ".join(plain.lower().split())


def handle(message: IncomingMessage) -> Reply:
    """Advance the chat's appointment conversation by one message."""
    if message.from_me:
        return None
    state = message.state
    answer = _normalized(message.text)
    step = state.get("step")
    if answer in GREETINGS or step is None:
        state["step"] = "asked"
        return OPTIONS
    if step == "rescheduling":
        state["step"] = "reschedule_requested"
        state["preferred"] = (message.text or "").strip()[:200]
        return RESCHEDULE_NOTED.format(day=state["preferred"])
    if answer == "1":
        state["step"] = "confirmed"
        return CONFIRMED
    if answer == "2":
        state["step"] = "rescheduling"
        return ASK_DAY
    if answer == "3":
        state["step"] = "cancelled"
        return CANCELLED
    state["step"] = "asked"
    return OPTIONS
