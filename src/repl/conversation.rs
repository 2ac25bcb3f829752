//! The chat's conversation: its messages (the system message first, when there is one), and
//! saving and loading them as `{"messages": [...]}` — the shape `gemma run --jsonl` reads.

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chat::Message;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

/// A file /load accepts: `{"messages": [...]}` or the bare list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Saved {
    Object { messages: Vec<Message> },
    List(Vec<Message>),
}

impl Conversation {
    pub fn new(system: Option<String>) -> Conversation {
        Conversation { messages: system.map(Message::system).into_iter().collect() }
    }

    pub fn system(&self) -> Option<String> {
        self.messages.first().filter(|m| m.role == "system").map(|m| m.content.text())
    }

    /// Sets or (with `None`) removes the system message; the turns stay.
    pub fn set_system(&mut self, system: Option<String>) {
        if self.system().is_some() {
            self.messages.remove(0);
        }
        if let Some(text) = system {
            self.messages.insert(0, Message::system(text));
        }
    }

    /// The messages after the system message.
    pub fn turns(&self) -> &[Message] {
        &self.messages[self.system().is_some() as usize..]
    }

    /// Drops every turn; keeps the system message.
    pub fn clear(&mut self) {
        self.messages.truncate(self.system().is_some() as usize);
    }

    /// Drops the oldest exchange: the first user message and the replies up to the next user
    /// message. False when there is no exchange before the last user message to drop.
    pub fn drop_oldest_exchange(&mut self) -> bool {
        let first = self.system().is_some() as usize;
        let users: Vec<usize> =
            (first..self.messages.len()).filter(|&i| self.messages[i].role == "user").take(2).collect();
        match users.as_slice() {
            [start, next] => {
                self.messages.drain(*start..*next);
                true
            }
            _ => false,
        }
    }

    /// Writes the conversation as pretty JSON, through a temporary file in the same directory
    /// renamed over `path`: a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut file = ggml::output::PendingFile::create(path)?;
        serde_json::to_writer_pretty(&mut file, self)?;
        file.write_all(b"\n")?;
        file.finish()?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Conversation, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let saved: Saved = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a conversation ({{\"messages\": [...]}}): {e}", path.display()))?;
        let (Saved::Object { messages } | Saved::List(messages)) = saved;
        if let Some(i) = messages.iter().skip(1).position(|m| m.role == "system") {
            return Err(format!("{}: message {} is a system message; only the first may be", path.display(), i + 1));
        }
        Ok(Conversation { messages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Conversation {
        let mut c = Conversation::new(Some("Be brief.".into()));
        c.messages.extend([Message::user("a"), Message::assistant("b"), Message::user("c"), Message::assistant("d")]);
        c
    }

    #[test]
    fn system_message_is_first_and_replaceable() {
        let mut c = chat();
        assert_eq!(c.system().as_deref(), Some("Be brief."));
        assert_eq!(c.turns().len(), 4);
        c.set_system(Some("Be kind.".into()));
        assert_eq!((c.system().as_deref(), c.messages.len()), (Some("Be kind."), 5));
        c.set_system(None);
        assert_eq!((c.system(), c.messages.len()), (None, 4));
        c.clear();
        assert!(c.messages.is_empty());
    }

    #[test]
    fn dropping_the_oldest_exchange_keeps_the_system_and_the_last_user() {
        let mut c = chat();
        c.messages.push(Message::user("e"));
        assert!(c.drop_oldest_exchange());
        let contents: Vec<String> = c.messages.iter().map(|m| m.content.text()).collect();
        assert_eq!(contents, ["Be brief.", "c", "d", "e"]);
        assert!(c.drop_oldest_exchange());
        assert!(!c.drop_oldest_exchange(), "the last user message stays");
        assert_eq!(c.messages.len(), 2);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.json");
        chat().save(&path).unwrap();
        assert_eq!(Conversation::load(&path).unwrap(), chat());
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["messages"][1], serde_json::json!({"role": "user", "content": "a"}));
        // A bare list loads too; junk is a message, not a panic.
        std::fs::write(&path, r#"[{"role": "user", "content": "x"}]"#).unwrap();
        assert_eq!(Conversation::load(&path).unwrap().messages, [Message::user("x")]);
        std::fs::write(&path, "{nope").unwrap();
        assert!(Conversation::load(&path).unwrap_err().contains("not a conversation"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
