//! `console --batch`: runs a script of commands, one per line, printing each
//! result as human text or as exactly one JSON object per command.
//!
//! Lines are read and executed one at a time, so a script piped from another
//! program runs as it arrives: a WRITE takes its lock when its `WRITE` line is
//! read, each edit line is applied as it comes, and ETIRW commits.

use crate::client::Client;
use crate::render;
use crate::script::{is_etirw, parse_edit, parse_line, Command, Line};
use serde::Serialize;
use serde_json::Value;
use shared::proto::NmReply;
use shared::proto::NmRequest;
use shared::{ErrorCode, WireError};
use std::io::{self, Write};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, Lines};

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
    let mut lines = input.lines();
    let mut all_ok = true;
    while let Some(line) = lines.next_line().await? {
        let text = line.trim().to_owned();
        let command = match parse_line(&line) {
            Ok(Line::Nothing) => continue,
            Ok(Line::Command(Command::Exit)) => break,
            Ok(Line::Command(command)) => command,
            Err(error) => {
                all_ok = false;
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
                    Ok(words) => Outcome::success(
                        &text,
                        "",
                        to_value(&serde_json::json!({ "words": words })),
                        String::new(),
                    ),
                    Err(e) => Outcome::failure(&text, e),
                }
            }
            Command::Watch { millis } => {
                let duration = millis.map(std::time::Duration::from_millis);
                let result = client
                    .watch(duration, |event| {
                        let _ = serde_json::to_writer(&mut *out, &event);
                        let _ = writeln!(out);
                        let _ = out.flush();
                    })
                    .await;
                match result {
                    Ok(n) => Outcome::success(
                        &text,
                        format!("{n} events"),
                        to_value(&serde_json::json!({ "events": n })),
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

/// Executes one command other than WRITE.
pub async fn execute(client: &mut Client, text: &str, command: Command) -> Outcome {
    let result = match command {
        Command::View { all, long } => {
            client
                .nm(NmRequest::View { all, long })
                .await
                .map(|reply| match reply {
                    NmReply::Files { rows } => {
                        let human = render::view(&rows, long);
                        Outcome::success(
                            text,
                            format!("{} files", rows.len()),
                            to_value(&serde_json::json!({ "files": rows })),
                            human,
                        )
                    }
                    other => unexpected(text, other),
                })
        }
        Command::Read { file } => client.read(&file).await.map(|content| {
            let content = String::from_utf8_lossy(&content).into_owned();
            Outcome::success(
                text,
                "",
                to_value(&serde_json::json!({ "content": content })),
                content.clone(),
            )
        }),
        Command::Stream { file } => client.stream(&file, |_| {}).await.map(|words| {
            let human = words.join(" ");
            Outcome::success(
                text,
                "",
                to_value(&serde_json::json!({ "words": words })),
                human,
            )
        }),
        Command::Create { file } => {
            done(
                client,
                text,
                NmRequest::Create { file: file.clone() },
                "File Created Successfully!",
            )
            .await
        }
        Command::Delete { file } => {
            let message = format!("File '{file}' deleted successfully!");
            done(client, text, NmRequest::Delete { file }, &message).await
        }
        Command::Undo { file } => {
            done(client, text, NmRequest::Undo { file }, "Undo Successful!").await
        }
        Command::Info { file } => {
            client
                .nm(NmRequest::Info { file })
                .await
                .map(|reply| match reply {
                    NmReply::Info { info } => {
                        let human = render::info(&info);
                        Outcome::success(text, "", to_value(&info), human)
                    }
                    other => unexpected(text, other),
                })
        }
        Command::List => client.nm(NmRequest::List).await.map(|reply| match reply {
            NmReply::Users { users } => {
                let human = render::list(&users);
                Outcome::success(
                    text,
                    format!("{} users", users.len()),
                    to_value(&serde_json::json!({ "users": users })),
                    human,
                )
            }
            other => unexpected(text, other),
        }),
        Command::Status => client.nm(NmRequest::Status).await.map(|reply| match reply {
            NmReply::Status { status } => {
                let human = render::status(&status);
                Outcome::success(text, "", to_value(&status), human)
            }
            other => unexpected(text, other),
        }),
        Command::AddAccess { file, user, access } => {
            done(
                client,
                text,
                NmRequest::AddAccess { file, user, access },
                "Access granted successfully!",
            )
            .await
        }
        Command::RemAccess { file, user } => {
            done(
                client,
                text,
                NmRequest::RemAccess { file, user },
                "Access removed successfully!",
            )
            .await
        }
        Command::RequestAccess { file, access } => client
            .nm(NmRequest::RequestAccess { file, access })
            .await
            .map(|reply| match reply {
                NmReply::Requests { requests } if requests.len() == 1 => {
                    let message = format!("Access request {} sent to the owner.", requests[0].id);
                    Outcome::success(text, message.clone(), to_value(&requests[0]), message)
                }
                other => unexpected(text, other),
            }),
        Command::ViewRequests => {
            client
                .nm(NmRequest::ViewRequests)
                .await
                .map(|reply| match reply {
                    NmReply::Requests { requests } => {
                        let human = render::requests(&requests);
                        Outcome::success(
                            text,
                            format!("{} pending", requests.len()),
                            to_value(&serde_json::json!({ "requests": requests })),
                            human,
                        )
                    }
                    other => unexpected(text, other),
                })
        }
        Command::Approve { id } => {
            done(
                client,
                text,
                NmRequest::Approve { id },
                &format!("Request {id} approved."),
            )
            .await
        }
        Command::Deny { id } => {
            done(
                client,
                text,
                NmRequest::Deny { id },
                &format!("Request {id} denied."),
            )
            .await
        }
        Command::CreateFolder { folder } => {
            done(
                client,
                text,
                NmRequest::CreateFolder { folder },
                "Folder created successfully!",
            )
            .await
        }
        Command::Move { file, folder } => {
            done(
                client,
                text,
                NmRequest::Move { file, folder },
                "File moved successfully!",
            )
            .await
        }
        Command::ViewFolder { folder } => {
            client
                .nm(NmRequest::ViewFolder { folder })
                .await
                .map(|reply| match reply {
                    NmReply::Folder { entries } => {
                        let human = render::folder(&entries);
                        Outcome::success(
                            text,
                            format!("{} entries", entries.len()),
                            to_value(&serde_json::json!({ "entries": entries })),
                            human,
                        )
                    }
                    other => unexpected(text, other),
                })
        }
        Command::Checkpoint { file, tag } => {
            let message = format!("Checkpoint '{tag}' created!");
            done(client, text, NmRequest::Checkpoint { file, tag }, &message).await
        }
        Command::ViewCheckpoint { file, tag } => {
            client.view_checkpoint(&file, &tag).await.map(|content| {
                let content = String::from_utf8_lossy(&content).into_owned();
                Outcome::success(
                    text,
                    "",
                    to_value(&serde_json::json!({ "content": content })),
                    content.clone(),
                )
            })
        }
        Command::Revert { file, tag } => {
            let message = format!("Reverted to checkpoint '{tag}'!");
            done(client, text, NmRequest::Revert { file, tag }, &message).await
        }
        Command::ListCheckpoints { file } => client
            .nm(NmRequest::ListCheckpoints { file })
            .await
            .map(|reply| match reply {
                NmReply::Checkpoints { checkpoints } => {
                    let human = render::checkpoints(&checkpoints);
                    Outcome::success(
                        text,
                        format!("{} checkpoints", checkpoints.len()),
                        to_value(&serde_json::json!({ "checkpoints": checkpoints })),
                        human,
                    )
                }
                other => unexpected(text, other),
            }),
        Command::Exec { file } => {
            client
                .nm(NmRequest::Exec { file })
                .await
                .map(|reply| match reply {
                    NmReply::Exec { output } => {
                        let human = render::exec(&output);
                        let message = match output.status {
                            Some(code) => format!("exit status {code}"),
                            None => "killed by a signal".to_owned(),
                        };
                        Outcome::success(text, message, to_value(&output), human)
                    }
                    other => unexpected(text, other),
                })
        }
        Command::Write { .. } | Command::Watch { .. } | Command::Exit => {
            Err(WireError::bad_request("not a single-line command"))
        }
    };
    result.unwrap_or_else(|e| Outcome::failure(text, e))
}

async fn done(
    client: &mut Client,
    text: &str,
    request: NmRequest,
    message: &str,
) -> Result<Outcome, WireError> {
    match client.nm(request).await? {
        NmReply::Done => Ok(Outcome::success(
            text,
            message,
            Value::Null,
            message.to_owned(),
        )),
        other => Ok(unexpected(text, other)),
    }
}

fn unexpected(text: &str, reply: NmReply) -> Outcome {
    Outcome::failure(
        text,
        WireError::internal(format!("unexpected reply from nm: {reply:?}")),
    )
}

/// A rejected edit line of a WRITE.
#[derive(Debug, Serialize)]
struct RejectedLine {
    line: String,
    code: ErrorCode,
    message: String,
}

/// WRITE f n, its edit lines, ETIRW. One outcome for the whole block; a
/// rejected edit line leaves the WRITE open and makes the outcome a failure.
async fn write<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    text: &str,
    file: &str,
    sentence: i64,
    lines: &mut Lines<R>,
) -> io::Result<Outcome> {
    let mut failure = client.write_begin(file, sentence).await.err();
    let mut rejected = Vec::new();
    let mut ended = false;
    while let Some(line) = lines.next_line().await? {
        if is_etirw(&line) {
            ended = true;
            break;
        }
        if failure.is_some() || matches!(parse_line(&line), Ok(Line::Nothing)) {
            continue;
        }
        let result = match parse_edit(&line) {
            Ok((index, content)) => client.write_edit(index, &content).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if e.code == ErrorCode::Unavailable {
                failure = Some(WireError::unavailable(format!(
                    "the WRITE was lost: {}",
                    e.message
                )));
            } else {
                rejected.push(RejectedLine {
                    line: line.trim().to_owned(),
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }
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
    let stats = match client.write_commit().await {
        Ok(stats) => stats,
        Err(e) => return Ok(Outcome::failure(text, e)),
    };
    let data = to_value(&serde_json::json!({ "stats": stats, "rejected_lines": rejected }));
    if let Some(first) = rejected.first() {
        let message = format!(
            "committed, but {} edit line(s) were rejected; first: {:?}: {}",
            rejected.len(),
            first.line,
            first.message
        );
        return Ok(Outcome {
            command: text.to_owned(),
            ok: false,
            code: Some(first.code),
            message,
            data,
            human: String::new(),
        });
    }
    Ok(Outcome::success(
        text,
        "Write Successful!",
        data,
        "Write Successful!".to_owned(),
    ))
}
