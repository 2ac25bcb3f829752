//! The chat's `/commands`, parsed from a typed line.

use std::path::PathBuf;

pub const HELP: &str = "\
/help              this list
/reset             start a new conversation (keeps the system message)
/system [TEXT]     set the system message (without TEXT: remove it); the conversation stays
/think on|off      show or hide the model's thinking (Gemma 4 with --think)
/set think on|off  let the model think before it answers (Gemma 4)
/set temp|top-k|top-p|min-p|seed VALUE   change sampling (seed: a number or 'random')
/save FILE         write the conversation as JSON ({\"messages\": [...]})
/load FILE         read a conversation written by /save
/image FILE        attach an image to the next message (--mmproj); dropping a file in does too
/stats             context, cache and speed of the session
/exit              leave (so does Ctrl-D)
Multi-line input: end a line with \\ to continue it, or put the text between \"\"\" lines.
Ctrl-C stops a reply; at an empty prompt it asks before leaving.";

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Reset,
    /// `None` removes the system message.
    System(Option<String>),
    /// Show thinking (`Some`), or toggle it.
    Think(Option<bool>),
    Set(Setting),
    Save(PathBuf),
    Load(PathBuf),
    /// Attach an image to the next message.
    Image(PathBuf),
    Stats,
    Exit,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting {
    Temperature(f32),
    TopK(usize),
    TopP(f32),
    MinP(f32),
    /// `None`: a fresh random seed.
    Seed(Option<u64>),
    /// Gemma 4 thinking mode in the chat template.
    Thinking(bool),
}

/// `Some` for a line that is a command (starts with `/`): the command, or a message saying
/// what is wrong with it.
pub fn parse(line: &str) -> Option<Result<Command, String>> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (rest, ""),
    };
    let no_arg =
        |command: Command| if arg.is_empty() { Ok(command) } else { Err(format!("/{name} takes no argument")) };
    let path = |command: fn(PathBuf) -> Command| {
        if arg.is_empty() {
            Err(format!("/{name} needs a file name"))
        } else {
            Ok(command(PathBuf::from(arg)))
        }
    };
    Some(match name {
        "help" | "?" => no_arg(Command::Help),
        "reset" | "clear" => no_arg(Command::Reset),
        "system" => Ok(Command::System((!arg.is_empty()).then(|| arg.to_string()))),
        "think" => match arg {
            "" => Ok(Command::Think(None)),
            _ => on_off(arg).map(|on| Command::Think(Some(on))),
        },
        "set" => parse_setting(arg).map(Command::Set),
        "save" => path(Command::Save),
        "load" => path(Command::Load),
        "image" | "img" => path(Command::Image),
        "stats" => no_arg(Command::Stats),
        "exit" | "quit" | "bye" => no_arg(Command::Exit),
        _ => Err(format!("unknown command /{name}: /help lists them")),
    })
}

fn parse_setting(arg: &str) -> Result<Setting, String> {
    let usage = "usage: /set temp|top-k|top-p|min-p|seed|think VALUE";
    let Some((key, value)) = arg.split_once(char::is_whitespace) else { return Err(usage.into()) };
    let value = value.trim();
    fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
        value.parse().map_err(|_| format!("/set {key}: {value:?} is not a valid number"))
    }
    match key {
        "temp" | "temperature" => number(key, value).map(Setting::Temperature),
        "top-k" | "top_k" => number(key, value).map(Setting::TopK),
        "top-p" | "top_p" => number(key, value).map(Setting::TopP),
        "min-p" | "min_p" => number(key, value).map(Setting::MinP),
        "seed" if value == "random" => Ok(Setting::Seed(None)),
        "seed" => number(key, value).map(|s| Setting::Seed(Some(s))),
        "think" | "thinking" => on_off(value).map(Setting::Thinking),
        _ => Err(format!("/set: unknown setting {key:?}; {usage}")),
    }
}

fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, not {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_not_a_command() {
        assert_eq!(parse("hello /help"), None);
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/help"), Some(Ok(Command::Help)));
        assert_eq!(parse("  /reset "), Some(Ok(Command::Reset)));
        assert_eq!(parse("/system Be brief.  "), Some(Ok(Command::System(Some("Be brief.".into())))));
        assert_eq!(parse("/system"), Some(Ok(Command::System(None))));
        assert_eq!(parse("/think off"), Some(Ok(Command::Think(Some(false)))));
        assert_eq!(parse("/think"), Some(Ok(Command::Think(None))));
        assert_eq!(parse("/set temp 0.5"), Some(Ok(Command::Set(Setting::Temperature(0.5)))));
        assert_eq!(parse("/set top-k 20"), Some(Ok(Command::Set(Setting::TopK(20)))));
        assert_eq!(parse("/set top-p 0.9"), Some(Ok(Command::Set(Setting::TopP(0.9)))));
        assert_eq!(parse("/set min-p 0.1"), Some(Ok(Command::Set(Setting::MinP(0.1)))));
        assert_eq!(parse("/set seed 7"), Some(Ok(Command::Set(Setting::Seed(Some(7))))));
        assert_eq!(parse("/set seed random"), Some(Ok(Command::Set(Setting::Seed(None)))));
        assert_eq!(parse("/set think on"), Some(Ok(Command::Set(Setting::Thinking(true)))));
        assert_eq!(parse("/save my chat.json"), Some(Ok(Command::Save("my chat.json".into()))));
        assert_eq!(parse("/load a.json"), Some(Ok(Command::Load("a.json".into()))));
        assert_eq!(parse("/image cat.png"), Some(Ok(Command::Image("cat.png".into()))));
        assert_eq!(parse("/image"), Some(Err("/image needs a file name".into())));
        assert_eq!(parse("/stats"), Some(Ok(Command::Stats)));
        assert_eq!(parse("/exit"), Some(Ok(Command::Exit)));
    }

    #[test]
    fn mistakes_are_explained() {
        for (line, expected) in [
            ("/nope", "unknown command /nope"),
            ("/set temp hot", "not a valid number"),
            ("/set top-k", "usage"),
            ("/set color red", "unknown setting"),
            ("/save", "needs a file name"),
            ("/think maybe", "on or off"),
            ("/exit now", "takes no argument"),
        ] {
            let err = parse(line).unwrap().unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }
}
