// Typed chat with the agent: the text box sends LiveKit's legacy chat message (the
// "lk-chat-topic" data message the agents playground sends); the agent answers by voice, and
// its reply shows in the transcript like a spoken one.

export const CHAT_TOPIC = "lk-chat-topic";
export const MAX_CHAT_CHARS = 1000; // the worker rejects longer messages

/**
 * Wire the chat form. `getRoom()` is the connected Room (or null), `getAgentIdentity()` the
 * agent's identity (or null: everyone), `show(text)` puts the sent message in the transcript,
 * `fail(error)` reports a send that failed.
 */
export function setupChat({ form, input, button, getRoom, getAgentIdentity, show, fail }) {
  input.maxLength = MAX_CHAT_CHARS;
  const update = () => {
    const room = getRoom();
    input.disabled = !room;
    button.disabled = !room || !input.value.trim();
  };
  input.addEventListener("input", update);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const room = getRoom();
    const text = input.value.trim();
    if (!room || !text) return;
    const message = { id: crypto.randomUUID(), timestamp: Date.now(), message: text };
    const agent = getAgentIdentity();
    try {
      await room.localParticipant.publishData(new TextEncoder().encode(JSON.stringify(message)), {
        reliable: true,
        topic: CHAT_TOPIC,
        destinationIdentities: agent ? [agent] : undefined,
      });
    } catch (e) {
      fail(e);
      return;
    }
    show({ id: `chat-${message.id}`, text, final: true });
    input.value = "";
    update();
  });
  update();
  return { update };
}
