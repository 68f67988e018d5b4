//! `console --batch`: runs a script of commands, one per line, printing each
//! result as human text or as exactly one JSON object per command.
//!
//! Lines are read and executed one at a time, so a script piped from another
//! program runs as it arrives: a WRITE takes its lock when its `WRITE` line is
//! read, each edit line is applied as it comes, and ETIRW commits. A WRITE
//! block that is all there already when its `WRITE` line is read goes to the
//! storage server as one request (same effect, one round trip).

use crate::client::Client;
use crate::render;
use crate::script::{is_etirw, parse_edit, parse_line, Command, Line};
use serde::Serialize;
use serde_json::Value;
use shared::proto::NmRequest;
use shared::proto::{EditLine, FileStats, NmReply};
use shared::{ErrorCode, WireError};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncBufRead;

/// A script's lines. A line that is not UTF-8 does not end the script:
/// it is read (with U+FFFD for the bad bytes) and flagged, and the caller
/// reports an error for that line only.
pub struct ScriptLines<R> {
    input: R,
    /// The line read so far: kept across polls, so a read that is not
    /// finished ([`ScriptLines::ready_line`]) loses nothing.
    buffer: Vec<u8>,
    not_utf8: bool,
    /// The input ended (a terminal's end of input is not read twice).
    ended: bool,
}

impl<R: AsyncBufRead + Unpin> ScriptLines<R> {
    pub fn new(input: R) -> Self {
        ScriptLines {
            input,
            buffer: Vec::new(),
            not_utf8: false,
            ended: false,
        }
    }

    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        std::future::poll_fn(|cx| self.poll_line(cx)).await
    }

    /// The next line if it is here already (read, or readable without
    /// waiting); `None` if it is still to come.
    pub fn ready_line(&mut self) -> io::Result<Option<Option<String>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_line(&mut cx) {
            Poll::Ready(line) => line.map(Some),
            Poll::Pending => Ok(None),
        }
    }

    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<String>>> {
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        loop {
            let available = match Pin::new(&mut self.input).poll_fill_buf(cx) {
                Poll::Ready(Ok(available)) => available,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if available.is_empty() {
                self.ended = true;
                if self.buffer.is_empty() {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Ok(Some(self.take_line())));
            }
            let (taken, ended) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (available.len(), false),
            };
            self.buffer.extend_from_slice(&available[..taken]);
            Pin::new(&mut self.input).consume(taken);
            if ended {
                return Poll::Ready(Ok(Some(self.take_line())));
            }
        }
    }

    fn take_line(&mut self) -> String {
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
            if self.buffer.last() == Some(&b'\r') {
                self.buffer.pop();
            }
        }
        let line = String::from_utf8_lossy(&self.buffer).into_owned();
        self.not_utf8 = line.as_bytes() != self.buffer.as_slice();
        self.buffer.clear();
        line
    }

    /// Whether the line last read was not valid UTF-8.
    pub fn not_utf8(&self) -> bool {
        self.not_utf8
    }
}

fn not_utf8(line: &str) -> WireError {
    WireError::bad_request(format!(
        "the line is not valid UTF-8 (shown with U+FFFD for the bad bytes): {:?}",
        line.trim()
    ))
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// The result of one command, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub command: String,
    pub ok: bool,
    pub code: Option<ErrorCode>,
    pub message: String,
    pub data: Value,
    /// What human mode prints on success.
    #[serde(skip)]
    pub human: String,
}

impl Outcome {
    pub fn success(command: &str, message: impl Into<String>, data: Value, human: String) -> Self {
        Outcome {
            command: command.to_owned(),
            ok: true,
            code: None,
            message: message.into(),
            data,
            human,
        }
    }

    pub fn failure(command: &str, error: WireError) -> Self {
        Outcome {
            command: command.to_owned(),
            ok: false,
            code: Some(error.code),
            message: error.message,
            data: Value::Null,
            human: String::new(),
        }
    }

    fn print(&self, format: Format, out: &mut impl Write) -> io::Result<()> {
        match format {
            Format::Json => {
                serde_json::to_writer(&mut *out, self)?;
                writeln!(out)?;
            }
            Format::Human if self.ok => {
                if !self.human.is_empty() {
                    writeln!(out, "{}", self.human.trim_end_matches('\n'))?;
                }
            }
            Format::Human => {
                let code = self.code.map(|c| c.as_str()).unwrap_or("ERROR");
                writeln!(out, "ERROR {code}: {}", self.message)?;
            }
        }
        out.flush()
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Runs a script; returns whether every command succeeded.
pub async fn run<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    input: R,
    format: Format,
    out: &mut impl Write,
) -> io::Result<bool> {
    let mut lines = ScriptLines::new(input);
    let mut all_ok = true;
    while let Some(line) = lines.next_line().await? {
        let text = line.trim().to_owned();
        if lines.not_utf8() {
            all_ok = false;
            Outcome::failure(&text, not_utf8(&line)).print(format, out)?;
            continue;
        }
        let command = match parse_line(&line) {
            Ok(Line::Nothing) => continue,
            Ok(Line::Command(Command::Exit)) => break,
            Ok(Line::Command(command)) => command,
            Err(mut error) => {
                all_ok = false;
                if starts_a_write(&text) {
                    // Its edit lines are not commands: skip them with it.
                    let (mut skipped, mut ended) = (0, false);
                    while let Some(line) = lines.next_line().await? {
                        if is_etirw(&line) {
                            ended = true;
                            break;
                        }
                        skipped += 1;
                    }
                    let upto = if ended {
                        "up to its ETIRW"
                    } else {
                        "to the end of the script"
                    };
                    error.message = format!(
                        "{}; the WRITE block ({skipped} lines {upto}) was skipped",
                        error.message
                    );
                }
                Outcome::failure(&text, error).print(format, out)?;
                continue;
            }
        };
        let outcome = match command {
            Command::Write { file, sentence } => {
                write(client, &text, &file, sentence, &mut lines).await?
            }
            Command::Stream { file } if format == Format::Human => {
                let mut printed = false;
                let result = client
                    .stream(&file, |word| {
                        let _ = write!(out, "{}{word}", if printed { " " } else { "" });
                        let _ = out.flush();
                        printed = true;
                    })
                    .await;
                if printed {
                    writeln!(out)?;
                }
                match result {
                    // The words are on the screen already.
                    Ok(words) => listing(&text, "words", &words, String::new()),
                    Err(e) => Outcome::failure(&text, e),
                }
            }
            Command::Watch { millis } => {
                let duration = millis.map(std::time::Duration::from_millis);
                let result = client
                    .watch(duration, None, 0, |event| {
                        let _ = serde_json::to_writer(&mut *out, &event);
                        let _ = writeln!(out);
                        let _ = out.flush();
                    })
                    .await;
                match result {
                    Ok(events) => Outcome::success(
                        &text,
                        format!("{events} events"),
                        to_value(&WatchSummary { events }),
                        String::new(),
                    ),
                    Err(e) => Outcome::failure(&text, e),
                }
            }
            command => execute(client, &text, command).await,
        };
        all_ok &= outcome.ok;
        outcome.print(format, out)?;
    }
    client.write_abort().await;
    Ok(all_ok)
}

/// Whether a line opens a WRITE block (whatever else is wrong with it).
fn starts_a_write(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("WRITE"))
}

/// Executes one command other than WRITE and WATCH.
pub async fn execute(client: &mut Client, text: &str, command: Command) -> Outcome {
    execute_inner(client, text, command)
        .await
        .unwrap_or_else(|e| Outcome::failure(text, e))
}

/// A successful listing: `data` is `{key: items}`, the message counts them.
fn listing<T: Serialize>(text: &str, key: &str, items: &[T], human: String) -> Outcome {
    let mut data = serde_json::Map::new();
    data.insert(key.to_owned(), to_value(&items));
    Outcome::success(
        text,
        format!("{} {key}", items.len()),
        Value::Object(data),
        human,
    )
}

/// A command whose answer is text content (READ, VIEWCHECKPOINT).
fn content(text: &str, bytes: Vec<u8>) -> Outcome {
    let content = String::from_utf8_lossy(&bytes).into_owned();
    let mut data = serde_json::Map::new();
    data.insert("content".to_owned(), Value::String(content.clone()));
    Outcome::success(text, "", Value::Object(data), content)
}

async fn execute_inner(
    client: &mut Client,
    text: &str,
    command: Command,
) -> Result<Outcome, WireError> {
    let request = match command {
        Command::Read { file } => return Ok(content(text, client.read(&file).await?)),
        Command::ViewCheckpoint { file, tag } => {
            return Ok(content(text, client.view_checkpoint(&file, &tag).await?))
        }
        Command::Stream { file } => {
            let words = client.stream(&file, |_| {}).await?;
            return Ok(listing(text, "words", &words, words.join(" ")));
        }
        Command::Create { file } => {
            client.create(&file).await?;
            return Ok(done_outcome(text, "File Created Successfully!"));
        }
        Command::Delete { file } => {
            let message = format!("File '{file}' deleted successfully!");
            return done(client, text, NmRequest::Delete { file }, &message).await;
        }
        Command::Undo { file } => {
            return done(client, text, NmRequest::Undo { file }, "Undo Successful!").await
        }
        Command::AddAccess { file, user, access } => {
            let request = NmRequest::AddAccess { file, user, access };
            return done(client, text, request, "Access granted successfully!").await;
        }
        Command::RemAccess { file, user } => {
            let request = NmRequest::RemAccess { file, user };
            return done(client, text, request, "Access removed successfully!").await;
        }
        Command::Approve { id } => {
            let message = format!("Request {id} approved.");
            return done(client, text, NmRequest::Approve { id }, &message).await;
        }
        Command::Deny { id } => {
            let message = format!("Request {id} denied.");
            return done(client, text, NmRequest::Deny { id }, &message).await;
        }
        Command::CreateFolder { folder } => {
            let request = NmRequest::CreateFolder { folder };
            return done(client, text, request, "Folder created successfully!").await;
        }
        Command::Move { file, folder } => {
            let request = NmRequest::Move { file, folder };
            return done(client, text, request, "File moved successfully!").await;
        }
        Command::Checkpoint { file, tag } => {
            let message = format!("Checkpoint '{tag}' created!");
            return done(client, text, NmRequest::Checkpoint { file, tag }, &message).await;
        }
        Command::Revert { file, tag } => {
            let message = format!("Reverted to checkpoint '{tag}'!");
            return done(client, text, NmRequest::Revert { file, tag }, &message).await;
        }
        Command::View { all, long } => NmRequest::View { all, long },
        Command::Info { file } => NmRequest::Info { file },
        Command::List => NmRequest::List,
        Command::Status => NmRequest::Status,
        Command::RequestAccess { file, access } => NmRequest::RequestAccess { file, access },
        Command::ViewRequests => NmRequest::ViewRequests,
        Command::ViewFolder { folder } => NmRequest::ViewFolder { folder },
        Command::ListCheckpoints { file } => NmRequest::ListCheckpoints { file },
        Command::Exec { file } => NmRequest::Exec { file },
        Command::Write { .. } | Command::Watch { .. } | Command::Exit => {
            return Err(WireError::bad_request("not a single-line command"))
        }
    };
    let long = matches!(request, NmRequest::View { long: true, .. });
    let requested_access = matches!(request, NmRequest::RequestAccess { .. });
    Ok(match client.nm(request).await? {
        NmReply::Files { rows } => listing(text, "files", &rows, render::view(&rows, long)),
        NmReply::Users { users } => listing(text, "users", &users, render::list(&users)),
        NmReply::Folder { entries } => listing(text, "entries", &entries, render::folder(&entries)),
        NmReply::Checkpoints { checkpoints } => listing(
            text,
            "checkpoints",
            &checkpoints,
            render::checkpoints(&checkpoints),
        ),
        NmReply::Requests { requests } if requested_access && requests.len() == 1 => {
            let message = format!("Access request {} sent to the owner.", requests[0].id);
            Outcome::success(text, message.clone(), to_value(&requests[0]), message)
        }
        NmReply::Requests { requests } => {
            listing(text, "requests", &requests, render::requests(&requests))
        }
        NmReply::Info { info } => Outcome::success(text, "", to_value(&info), render::info(&info)),
        NmReply::Status { status } => {
            Outcome::success(text, "", to_value(&status), render::status(&status))
        }
        NmReply::Exec { output } => {
            let message = match output.status {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            };
            Outcome::success(text, message, to_value(&output), render::exec(&output))
        }
        other => unexpected(text, other),
    })
}

async fn done(
    client: &mut Client,
    text: &str,
    request: NmRequest,
    message: &str,
) -> Result<Outcome, WireError> {
    match client.nm(request).await? {
        NmReply::Done => Ok(done_outcome(text, message)),
        other => Ok(unexpected(text, other)),
    }
}

/// A command that succeeded with nothing but `message` to say.
fn done_outcome(text: &str, message: &str) -> Outcome {
    Outcome::success(text, message, Value::Null, message.to_owned())
}

fn unexpected(text: &str, reply: NmReply) -> Outcome {
    Outcome::failure(
        text,
        WireError::internal(format!("unexpected reply from nm: {reply:?}")),
    )
}

/// WATCH's `data`.
#[derive(Serialize)]
struct WatchSummary {
    events: u64,
}

/// WRITE's `data`.
#[derive(Serialize)]
struct WriteSummary<'a> {
    stats: &'a FileStats,
    rejected_lines: &'a [RejectedLine],
}

/// A rejected edit line of a WRITE.
#[derive(Debug, Serialize)]
struct RejectedLine {
    line: String,
    code: ErrorCode,
    message: String,
}

/// Records the edit lines a server refused: a lost WRITE fails the block, any
/// other refusal is a rejected line (the WRITE stays open).
fn reject_answers(
    rejected: &mut Vec<RejectedLine>,
    failure: &mut Option<WireError>,
    lines: &[String],
    answers: Vec<Result<u64, WireError>>,
) {
    for (line, answer) in lines.iter().zip(answers) {
        let Err(e) = answer else { continue };
        if e.code == ErrorCode::Unavailable {
            failure.get_or_insert_with(|| {
                WireError::unavailable(format!("the WRITE was lost: {}", e.message))
            });
        } else {
            rejected.push(RejectedLine {
                line: line.trim().to_owned(),
                code: e.code,
                message: e.message,
            });
        }
    }
}

/// The most lines, and bytes of them, a WRITE block sent as one request
/// holds (a longer one goes line by line, well under the frame limit).
const BLOCK_LINES: usize = 1024;
const BLOCK_BYTES: usize = 256 * 1024;

/// WRITE f n, its edit lines, ETIRW. One outcome for the whole block; a
/// rejected edit line leaves the WRITE open and makes the outcome a failure.
///
/// A block whose lines are all here already (a script from a file, or from
/// a program that wrote it out) goes to the server as one request: one
/// round trip instead of one for WRITE, each line and ETIRW. One still
/// arriving goes line by line as it comes (the lock is taken when its
/// WRITE line is read), its edit lines without waiting for each answer.
async fn write<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    text: &str,
    file: &str,
    sentence: i64,
    lines: &mut ScriptLines<R>,
) -> io::Result<Outcome> {
    // Each line read ahead, with whether it was valid UTF-8.
    let mut ahead: Vec<(String, bool)> = Vec::new();
    let mut bytes = 0;
    while ahead.len() < BLOCK_LINES && bytes < BLOCK_BYTES {
        match lines.ready_line()? {
            Some(Some(line)) if is_etirw(&line) => {
                return Ok(write_whole(client, text, file, sentence, ahead).await);
            }
            Some(Some(line)) => {
                bytes += line.len();
                ahead.push((line, lines.not_utf8()));
            }
            Some(None) | None => break,
        }
    }
    write_line_by_line(client, text, file, sentence, ahead, lines).await
}

/// A whole WRITE block, `lines` up to its ETIRW, as one request.
async fn write_whole(
    client: &mut Client,
    text: &str,
    file: &str,
    sentence: i64,
    lines: Vec<(String, bool)>,
) -> Outcome {
    // Each line, with the edit it sent or why it was refused here.
    let mut edits = Vec::new();
    let mut sent: Vec<(String, Result<usize, WireError>)> = Vec::new();
    for (line, not_utf8_line) in lines {
        if matches!(parse_line(&line), Ok(Line::Nothing)) {
            continue;
        }
        let parsed = match parse_edit(&line) {
            _ if not_utf8_line => Err(not_utf8(&line)),
            Ok((word_index, content)) => {
                edits.push(EditLine {
                    word_index,
                    content,
                });
                Ok(edits.len() - 1)
            }
            Err(e) => Err(e),
        };
        sent.push((line, parsed));
    }
    let (stats, answers) = match client.write_block(file, sentence, edits).await {
        Ok(written) => written,
        Err(e) => return Outcome::failure(text, e),
    };
    let mut rejected = Vec::new();
    let mut failure = None;
    for (line, parsed) in sent {
        let answer = match parsed {
            Ok(i) => answers.get(i).cloned().unwrap_or_else(|| {
                Err(WireError::internal("the server left this line unanswered"))
            }),
            Err(e) => Err(e),
        };
        reject_answers(&mut rejected, &mut failure, &[line], vec![answer]);
    }
    match failure {
        Some(error) => Outcome::failure(text, error),
        None => written(text, &stats, &rejected),
    }
}

/// A WRITE block line by line: `ahead` (read already), then the rest of
/// `lines` up to ETIRW.
async fn write_line_by_line<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    text: &str,
    file: &str,
    sentence: i64,
    ahead: Vec<(String, bool)>,
    lines: &mut ScriptLines<R>,
) -> io::Result<Outcome> {
    let mut ahead = ahead.into_iter();
    let mut failure = client.write_begin(file, sentence).await.err();
    let mut rejected = Vec::new();
    let mut ended = false;
    // Edit lines go to the server as they come; their answers are read
    // (in order) before ETIRW is sent, or before a line refused here is
    // recorded, so nothing is committed while one is unanswered.
    let mut sent: Vec<String> = Vec::new();
    loop {
        let (line, not_utf8_line) = match ahead.next() {
            Some(read) => read,
            None => match lines.next_line().await? {
                Some(line) => (line, lines.not_utf8()),
                None => break,
            },
        };
        if is_etirw(&line) {
            ended = true;
            break;
        }
        if failure.is_some() || matches!(parse_line(&line), Ok(Line::Nothing)) {
            continue;
        }
        let result = match parse_edit(&line) {
            _ if not_utf8_line => Err(not_utf8(&line)),
            Ok((index, content)) => client.write_edit_pipelined(index, &content).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(earlier) => {
                let answered: Vec<String> = sent.drain(..earlier.len()).collect();
                reject_answers(&mut rejected, &mut failure, &answered, earlier);
                sent.push(line);
            }
            Err(e) => {
                // The connection's own failure is the block's; a line
                // refused here comes after the lines sent ahead of it.
                if e.code == ErrorCode::Unavailable {
                    reject_answers(&mut rejected, &mut failure, &[line], vec![Err(e)]);
                    let answers = client.write_edit_answers().await;
                    let lines = std::mem::take(&mut sent);
                    reject_answers(&mut rejected, &mut failure, &lines, answers);
                } else {
                    let answers = client.write_edit_answers().await;
                    let lines = std::mem::take(&mut sent);
                    reject_answers(&mut rejected, &mut failure, &lines, answers);
                    reject_answers(&mut rejected, &mut failure, &[line], vec![Err(e)]);
                }
            }
        }
    }
    let answers = client.write_edit_answers().await;
    reject_answers(&mut rejected, &mut failure, &sent, answers);
    if let Some(error) = failure {
        return Ok(Outcome::failure(text, error));
    }
    if !ended {
        client.write_abort().await;
        return Ok(Outcome::failure(
            text,
            WireError::bad_request("the script ended before ETIRW; the WRITE was abandoned"),
        ));
    }
    match client.write_commit().await {
        Ok(stats) => Ok(written(text, &stats, &rejected)),
        Err(e) => Ok(Outcome::failure(text, e)),
    }
}

/// A committed WRITE's outcome: a failure if any edit line was rejected.
fn written(text: &str, stats: &FileStats, rejected: &[RejectedLine]) -> Outcome {
    let data = to_value(&WriteSummary {
        stats,
        rejected_lines: rejected,
    });
    if let Some(first) = rejected.first() {
        let message = format!(
            "committed, but {} edit line(s) were rejected; first: {:?}: {}",
            rejected.len(),
            first.line,
            first.message
        );
        return Outcome {
            command: text.to_owned(),
            ok: false,
            code: Some(first.code),
            message,
            data,
            human: String::new(),
        };
    }
    Outcome::success(
        text,
        "Write Successful!",
        data,
        "Write Successful!".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, BufReader};

    /// What decides whether a WRITE block goes whole: a line is "ready"
    /// only once it is all there, and a line still arriving is neither lost
    /// nor split by asking.
    #[tokio::test]
    async fn a_line_is_ready_only_once_it_is_all_there() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = ScriptLines::new(BufReader::new(reader));
        assert_eq!(lines.ready_line().unwrap(), None, "nothing written yet");
        writer.write_all(b"WRITE a.txt 0\n0 hel").await.unwrap();
        assert_eq!(
            lines.ready_line().unwrap(),
            Some(Some("WRITE a.txt 0".to_owned()))
        );
        assert_eq!(lines.ready_line().unwrap(), None, "half a line");
        writer.write_all(b"lo \xff\r\nETIRW").await.unwrap();
        assert_eq!(
            lines.ready_line().unwrap(),
            Some(Some("0 hello \u{fffd}".to_owned()))
        );
        assert!(lines.not_utf8());
        assert_eq!(lines.ready_line().unwrap(), None, "no end of line yet");
        drop(writer);
        assert_eq!(lines.next_line().await.unwrap(), Some("ETIRW".to_owned()));
        assert!(!lines.not_utf8());
        assert_eq!(lines.next_line().await.unwrap(), None);
        assert_eq!(lines.ready_line().unwrap(), Some(None));
    }
}
