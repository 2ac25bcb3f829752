//! `gemma chat`: an interactive conversation in the terminal.
//!
//! Each turn renders the whole conversation with the model's chat template and hands it to
//! the [`Session`], which runs only the tokens its cache does not hold yet. Lines are read with
//! rustyline (history in the user's data dir, multi-line input: [`input`]), `/commands` are
//! parsed by [`command`], replies stream through [`display`] (thinking dimmed or collapsed),
//! and a one-line stats footer follows each reply on stderr.
//!
//! Ctrl-C: while a reply is generated, a SIGINT handler sets the session's cancellation flag and
//! the reply stops within one token (what was generated stays in the conversation), or, while
//! the prompt is still being read, within one layer (the message is dropped); at the
//! prompt rustyline reads it as a key (the terminal is raw there): with text it clears the line,
//! on an empty line it asks to press it again to leave.
//!
//! Without a terminal on stdout there are no colors and no banner; without one on stdin, lines
//! are read plainly from it (a scripted chat).

pub mod command;
pub mod conversation;
pub mod display;
pub mod input;

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossterm::style::Stylize;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::history::FileHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Config, Editor, Event, EventContext, EventHandler, KeyEvent, Movement, RepeatCount,
};
use thiserror::Error;

use crate::chat::{ChatError, ChatTemplate, Content, Message, Part, RenderOptions};
use crate::kv_cache::KvTypes;
use crate::run::{Generator, RunError, StopReason};
use crate::sample::{Sampler, SamplerConfig};
use crate::session::{Session, TurnStats};
use crate::vision::prompt::{expand, ImageTokens};
use crate::vision::{ImageChunk, Images};
use command::{Command, Setting};
use conversation::Conversation;
use display::ReplyWriter;
use input::MultiLine;

#[derive(Debug, Error)]
pub enum ReplError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("reading input: {0}")]
    Readline(#[from] ReadlineError),
    #[error("writing to the terminal: {0}")]
    Io(#[from] io::Error),
    #[error("installing the Ctrl-C handler: {0}")]
    Signal(#[from] ctrlc::Error),
}

/// How the chat runs (the `gemma chat` flags).
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// Shown in the banner.
    pub model_name: String,
    pub system: Option<String>,
    /// Gemma 4 thinking mode (the template's `enable_thinking`).
    pub think: bool,
    pub context: usize,
    pub batch: usize,
    pub kv_types: KvTypes,
    /// Tokens per reply at most; `None`: until the model ends its turn or the context is full.
    pub n_predict: Option<usize>,
    pub sampling: SamplerConfig,
    /// No banner and no stats footer.
    pub quiet: bool,
    /// Where the input history is kept; `None`: nowhere.
    pub history: Option<PathBuf>,
}

/// An image file dropped into the input (a terminal pastes its path, maybe quoted): the path,
/// when the line is nothing else and names an image file that exists.
fn dropped_image(line: &str) -> Option<PathBuf> {
    let t = line.trim();
    let t = t.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')).unwrap_or(t);
    let t = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t);
    let t = t.strip_prefix("file://").unwrap_or(t);
    let lower = t.to_lowercase();
    let image = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"].iter().any(|e| lower.ends_with(e));
    let path = PathBuf::from(t.replace("\\ ", " "));
    (image && path.is_file()).then_some(path)
}

/// The default history file: `chat-history.txt` in the user's data dir (`$XDG_DATA_HOME/gemma`
/// or `~/.local/share/gemma` on Linux).
pub fn default_history_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("gemma").join("chat-history.txt"))
}

/// Runs the chat until Ctrl-D, /exit or a confirmed Ctrl-C.
pub fn run(
    generator: &mut Generator,
    template: ChatTemplate,
    (bos_token, eos_token): (String, String),
    options: ChatOptions,
    images: Option<Images>,
) -> Result<(), ReplError> {
    let interrupt = Interrupt::install(!io::stdin().is_terminal())?;
    let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let sampler = Sampler::new(options.sampling).map_err(RunError::from)?;
    let render = RenderOptions {
        add_generation_prompt: true,
        enable_thinking: options.think,
        tools: None,
        bos_token,
        eos_token,
    };
    let session = Session::new(generator, options.context, options.kv_types, options.batch)?;
    let mut chat = Chat {
        session,
        template,
        render,
        conversation: Conversation::new(options.system.clone()),
        sampler,
        show_thoughts: true,
        color,
        interrupt,
        last: None,
        totals: (0, 0),
        options,
        images,
        attached: Vec::new(),
    };
    chat.run()
}

/// What Ctrl-C does, shared with the SIGINT handler.
struct Interrupt {
    /// A reply is being generated: Ctrl-C stops it.
    replying: AtomicBool,
    /// The session's cancellation flag.
    cancel: AtomicBool,
}

impl Interrupt {
    /// Installs the SIGINT handler. Outside a reply it leaves the program when
    /// `exit_when_idle` (stdin is not a terminal, so rustyline does not read Ctrl-C as a key);
    /// otherwise a stray Ctrl-C between replies is ignored.
    fn install(exit_when_idle: bool) -> Result<Arc<Interrupt>, ReplError> {
        let interrupt = Arc::new(Interrupt { replying: AtomicBool::new(false), cancel: AtomicBool::new(false) });
        let shared = Arc::clone(&interrupt);
        ctrlc::set_handler(move || {
            if shared.replying.load(Ordering::SeqCst) {
                shared.cancel.store(true, Ordering::SeqCst);
            } else if exit_when_idle {
                std::process::exit(130);
            }
        })?;
        Ok(interrupt)
    }
}

/// Ctrl-C at the prompt: clears a line with text; on an empty line, interrupts (the chat then
/// asks before leaving).
struct CtrlC;

impl ConditionalEventHandler for CtrlC {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        Some(if ctx.line().is_empty() { Cmd::Interrupt } else { Cmd::Kill(Movement::WholeBuffer) })
    }
}

/// Colors what the user types.
struct InputStyle {
    color: bool,
}

impl Highlighter for InputStyle {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if self.color && !line.is_empty() {
            Cow::Owned(line.green().to_string())
        } else {
            Cow::Borrowed(line)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        self.color
    }
}

impl rustyline::completion::Completer for InputStyle {
    type Candidate = String;
}

impl rustyline::hint::Hinter for InputStyle {
    type Hint = String;
}

impl rustyline::validate::Validator for InputStyle {}

impl rustyline::Helper for InputStyle {}

type LineEditor = Editor<InputStyle, FileHistory>;

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

struct Chat<'g> {
    session: Session<'g>,
    template: ChatTemplate,
    render: RenderOptions,
    conversation: Conversation,
    sampler: Sampler,
    show_thoughts: bool,
    color: bool,
    interrupt: Arc<Interrupt>,
    /// The last reply's stats and why it ended.
    last: Option<(TurnStats, StopReason)>,
    /// Tokens prefilled and generated since the start.
    totals: (usize, usize),
    options: ChatOptions,
    /// The vision encoder (`--mmproj`), and the images attached to the next message.
    images: Option<Images>,
    attached: Vec<PathBuf>,
}

impl Chat<'_> {
    fn run(&mut self) -> Result<(), ReplError> {
        let mut editor = LineEditor::with_config(Config::builder().auto_add_history(false).build())?;
        editor.set_helper(Some(InputStyle { color: self.color }));
        editor.bind_sequence(KeyEvent::ctrl('C'), EventHandler::Conditional(Box::new(CtrlC)));
        if let Some(path) = &self.options.history {
            // A missing file is the first chat; an unreadable one is not worth stopping for.
            let _ = editor.load_history(path);
        }
        if io::stdout().is_terminal() && !self.options.quiet {
            self.note(&format!(
                "gemma chat · {} · context {} · /help for commands, Ctrl-D to leave",
                self.options.model_name, self.options.context
            ));
        }
        let mut lines = MultiLine::default();
        let mut leaving = false;
        loop {
            let prompt = if lines.continuing() { "... " } else { ">>> " };
            let styled = if self.color { prompt.green().bold().to_string() } else { prompt.to_string() };
            match editor.readline(&(prompt, styled)) {
                Ok(line) => {
                    leaving = false;
                    let Some(text) = lines.push(&line) else { continue };
                    if text.trim().is_empty() {
                        continue;
                    }
                    self.remember(&mut editor, &text);
                    let flow = match command::parse(&text) {
                        Some(Ok(command)) => self.command(command)?,
                        Some(Err(message)) => {
                            self.note(&message);
                            Flow::Continue
                        }
                        None => self.turn(text, &mut editor)?,
                    };
                    if flow == Flow::Exit {
                        return Ok(());
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    if lines.continuing() {
                        lines.clear();
                        self.note("(input discarded)");
                    } else if leaving {
                        return Ok(());
                    } else {
                        leaving = true;
                        self.note("Press Ctrl-C again to leave (or Ctrl-D, or /exit).");
                    }
                }
                Err(ReadlineError::Eof) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Adds an input to the history and writes the history file.
    fn remember(&self, editor: &mut LineEditor, text: &str) {
        let _ = editor.add_history_entry(text);
        if let Some(path) = &self.options.history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(path);
        }
    }

    /// A message from the chat itself (not the model): stderr, dimmed.
    fn note(&self, text: &str) {
        let mut err = io::stderr().lock();
        let _ = if self.color { writeln!(err, "{}", text.dark_grey()) } else { writeln!(err, "{text}") };
    }

    fn command(&mut self, command: Command) -> Result<Flow, ReplError> {
        match command {
            Command::Help => self.note(command::HELP),
            Command::Exit => return Ok(Flow::Exit),
            Command::Reset => {
                self.conversation.clear();
                self.session.reset();
                self.note("New conversation.");
            }
            Command::System(text) => {
                let note = if text.is_some() { "System message set." } else { "System message removed." };
                self.conversation.set_system(text);
                self.note(note);
            }
            Command::Think(show) => {
                self.show_thoughts = show.unwrap_or(!self.show_thoughts);
                self.note(if self.show_thoughts { "Thinking is shown." } else { "Thinking is collapsed." });
            }
            Command::Set(setting) => self.set(setting),
            Command::Save(path) => match self.conversation.save(&path) {
                Ok(()) => {
                    self.note(&format!("Saved {} messages to {}.", self.conversation.messages.len(), path.display()))
                }
                Err(e) => self.note(&format!("Could not save to {}: {e}", path.display())),
            },
            Command::Load(path) => match Conversation::load(&path) {
                Ok(conversation) => {
                    self.conversation = conversation;
                    self.note(&format!(
                        "Loaded {} messages from {}.",
                        self.conversation.messages.len(),
                        path.display()
                    ));
                }
                Err(e) => self.note(&e),
            },
            Command::Stats => self.stats(),
            Command::Image(path) => self.attach(path),
        }
        Ok(Flow::Continue)
    }

    fn set(&mut self, setting: Setting) {
        let mut config = *self.sampler.config();
        match setting {
            Setting::Temperature(t) => config.temperature = t,
            Setting::TopK(k) => config.top_k = k,
            Setting::TopP(p) => config.top_p = p,
            Setting::MinP(p) => config.min_p = p,
            Setting::Seed(seed) => config.seed = seed,
            Setting::Thinking(on) => {
                self.render.enable_thinking = on;
                self.note(if on { "The model thinks before it answers." } else { "The model answers directly." });
                return;
            }
        }
        match Sampler::new(config) {
            Ok(sampler) => {
                self.sampler = sampler;
                self.note(&self.sampling_line());
            }
            Err(e) => self.note(&format!("Not changed: {e}")),
        }
    }

    fn sampling_line(&self) -> String {
        let c = self.sampler.config();
        format!(
            "temp {} · top-k {} · top-p {} · min-p {} · seed {}",
            c.temperature,
            c.top_k,
            c.top_p,
            c.min_p,
            self.sampler.seed()
        )
    }

    fn stats(&self) {
        let s = &self.session;
        let mut lines = vec![
            format!(
                "context {}/{} tokens · KV cache {:.1} MiB ({})",
                s.n_cached(),
                s.context(),
                s.cache_bytes() as f64 / (1024.0 * 1024.0),
                self.options.kv_types
            ),
            format!(
                "conversation: {} messages{}",
                self.conversation.turns().len(),
                if self.conversation.system().is_some() { " and a system message" } else { "" }
            ),
            format!("session: {} tokens prefilled, {} generated", self.totals.0, self.totals.1),
            self.sampling_line(),
            format!(
                "thinking: {}, {}",
                if self.render.enable_thinking { "on" } else { "off" },
                if self.show_thoughts { "shown" } else { "collapsed" }
            ),
        ];
        if let Some((stats, stop)) = &self.last {
            lines.insert(2, format!("last reply: {}", footer(stats, *stop)));
        }
        let model = &s.generator().model;
        lines.push(format!("model: {}", model.placement().lines().next().unwrap_or("")));
        if let Some(m) = model.moe_stats() {
            lines.push(format!("this session: {}", m.describe()));
        }
        self.note(&lines.join("\n"));
    }

    /// Attaches the image at `path` to the next message, once it decodes and encodes.
    fn attach(&mut self, path: PathBuf) {
        let Some(images) = &mut self.images else {
            self.note("Images need a vision encoder: start gemma chat with --mmproj FILE (or an mmproj*.gguf beside the model).");
            return;
        };
        let part = Part::Image { path: path.display().to_string() };
        match images.encode_part(&part, Path::new(".")) {
            Ok(image) => {
                self.attached.push(path.clone());
                self.note(&format!(
                    "Attached {} ({}x{}, {} soft tokens): it goes with your next message.",
                    path.display(),
                    image.size.0,
                    image.size.1,
                    image.n_soft
                ));
            }
            Err(e) => self.note(&format!("error: {e}")),
        }
    }

    /// The conversation's prompt: ids with each image expanded, and where the images are.
    fn prompt(&mut self) -> Result<(Vec<u32>, Vec<ImageChunk>), String> {
        let ids = self.prompt_ids().map_err(|e| e.to_string())?;
        let parts: Vec<Part> =
            self.conversation.messages.iter().flat_map(|m| m.content.images().into_iter().cloned()).collect();
        if parts.is_empty() {
            return Ok((ids, Vec::new()));
        }
        let images =
            self.images.as_mut().ok_or("the conversation holds images but there is no vision encoder (--mmproj)")?;
        let encoded = parts
            .iter()
            .map(|p| images.encode_part(p, Path::new(".")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let generator = self.session.generator();
        let tokens = ImageTokens::find(&generator.tokenizer).map_err(|e| e.to_string())?;
        expand(&ids, &encoded, tokens, generator.tokenizer.bos())
    }

    /// The prompt ids of the conversation with the model's turn opened.
    fn prompt_ids(&self) -> Result<Vec<u32>, ChatError> {
        let text = self.template.render(&self.conversation.messages, &self.render)?;
        Ok(self.session.generator().tokenize_prompt(&text, true))
    }

    /// One user message and the model's reply.
    fn turn(&mut self, text: String, editor: &mut LineEditor) -> Result<Flow, ReplError> {
        if let Some(path) = dropped_image(&text) {
            self.attach(path);
            return Ok(Flow::Continue);
        }
        let content = match self.attached.is_empty() {
            true => Content::Text(text),
            false => Content::Parts(
                (self.attached.iter().map(|p| Part::Image { path: p.display().to_string() }))
                    .chain([Part::Text { text }])
                    .collect(),
            ),
        };
        self.conversation.messages.push(Message::user(content));
        let (prompt, chunks) = match self.prompt() {
            Ok(p) => p,
            Err(e) => {
                self.conversation.messages.pop();
                self.note(&format!("error: {e}"));
                return Ok(Flow::Continue);
            }
        };
        let (prompt, chunks) = if prompt.len() >= self.session.context() {
            match self.make_room(prompt.len(), editor)? {
                Some(_) => match self.prompt() {
                    Ok(p) => p,
                    Err(e) => {
                        self.conversation.messages.pop();
                        self.note(&format!("error: {e}"));
                        return Ok(Flow::Continue);
                    }
                },
                None => {
                    self.conversation.messages.pop();
                    return Ok(Flow::Continue);
                }
            }
        } else {
            (prompt, chunks)
        };

        self.interrupt.cancel.store(false, Ordering::SeqCst);
        self.interrupt.replying.store(true, Ordering::SeqCst);
        let result = self.reply(&prompt, &chunks);
        self.interrupt.replying.store(false, Ordering::SeqCst);
        let (stats, text, stop) = match result {
            Ok(done) => done,
            // The terminal is gone: nothing more to say.
            Err(RunError::Output(e)) => return Err(e.into()),
            Err(e) => {
                self.conversation.messages.pop();
                self.note(&format!("error: {e}"));
                return Ok(Flow::Continue);
            }
        };
        self.totals.0 += stats.prefill.prefilled;
        self.totals.1 += stats.generated;
        if text.is_empty() && stop == StopReason::Cancelled {
            // Nothing was said: forget the question too, so that the roles still alternate.
            self.conversation.messages.pop();
        } else {
            self.conversation.messages.push(Message::assistant(text));
            self.attached.clear();
        }
        if !self.options.quiet {
            self.note(&format!("[{}]", footer(&stats, stop)));
        }
        if stop == StopReason::ContextFull {
            self.note("The context is full: the next message will ask whether to reset or drop the oldest turns.");
        }
        self.last = Some((stats, stop));
        Ok(Flow::Continue)
    }

    /// Prefills `prompt` and streams the reply to stdout.
    fn reply(&mut self, prompt: &[u32], images: &[ImageChunk]) -> Result<(TurnStats, String, StopReason), RunError> {
        let cancel = &self.interrupt.cancel;
        let prefill = self.session.prefill_images(prompt, images, cancel)?;
        let mut writer = ReplyWriter::new(self.color, self.show_thoughts);
        let mut stdout = io::stdout();
        let done = self.session.generate(&mut self.sampler, self.options.n_predict, &[], cancel, &mut |piece| {
            writer.write(&mut stdout, piece)
        })?;
        writer.finish(&mut stdout).map_err(RunError::Output)?;
        let stats = TurnStats::new(prefill, &done, &self.session);
        Ok((stats, done.text, done.stop_reason))
    }

    /// The conversation does not fit the context: asks whether to start over or drop the
    /// oldest turns, and returns the prompt that then fits (`None`: the message is not sent).
    fn make_room(&mut self, needed: usize, editor: &mut LineEditor) -> Result<Option<Vec<u32>>, ReplError> {
        let context = self.session.context();
        self.note(&format!(
            "The context is full: the conversation is {needed} tokens and the context holds {context} (-c).\n\
             [r] start a new conversation with this message, [d] drop the oldest turns, [c] cancel"
        ));
        let answer = match editor.readline("r/d/c? ") {
            Ok(a) => a.trim().to_lowercase(),
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => String::new(),
            Err(e) => return Err(e.into()),
        };
        // Room for a reply after the prompt: the reply limit, at most half the context.
        let room = self.options.n_predict.unwrap_or(context / 4).min(context / 2);
        match answer.as_str() {
            "r" | "reset" => {
                let message = self.conversation.messages.pop().expect("the user message");
                self.conversation.clear();
                self.conversation.messages.push(message);
                self.session.reset();
            }
            "d" | "drop" => {
                let mut dropped = 0;
                while self.prompt_ids()?.len() + room > context && self.conversation.drop_oldest_exchange() {
                    dropped += 1;
                }
                self.note(&format!("Dropped the oldest {dropped} exchange(s)."));
            }
            _ => {
                self.note("Message not sent.");
                return Ok(None);
            }
        }
        let prompt = self.prompt_ids()?;
        if prompt.len() >= context {
            self.note(&format!("The message alone is {} tokens, more than the context of {context}.", prompt.len()));
            return Ok(None);
        }
        Ok(Some(prompt))
    }
}

/// `12 tokens, 41.3 tok/s | context 85/4096 | prefilled 20 of 73 prompt tokens, 812.0 tok/s`,
/// and why the reply ended unless the model ended it.
fn footer(stats: &TurnStats, stop: StopReason) -> String {
    let t = &stats.timings;
    let mut line = format!(
        "{} tokens, {:.1} tok/s | context {}/{} | prefilled {} of {} prompt tokens, {:.1} tok/s",
        stats.generated,
        t.generation_tokens_per_s,
        stats.context_used,
        stats.context,
        stats.prefill.prefilled,
        stats.prefill.prompt_tokens,
        t.prompt_tokens_per_s
    );
    if stop != StopReason::Eog {
        line += " | ";
        line += stop.describe();
    }
    line
}
