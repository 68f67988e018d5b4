//! Parsing of command lines, as typed in a batch script or at the TUI.

use shared::proto::Access;
use shared::{ErrorCode, WireError};

/// One command line. WRITE's edit lines and ETIRW are read separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    View {
        all: bool,
        long: bool,
    },
    Read {
        file: String,
    },
    Create {
        file: String,
    },
    Write {
        file: String,
        sentence: i64,
    },
    Undo {
        file: String,
    },
    Info {
        file: String,
    },
    Delete {
        file: String,
    },
    Stream {
        file: String,
    },
    List,
    Status,
    AddAccess {
        file: String,
        user: String,
        access: Access,
    },
    RemAccess {
        file: String,
        user: String,
    },
    RequestAccess {
        file: String,
        access: Access,
    },
    ViewRequests,
    Approve {
        id: u64,
    },
    Deny {
        id: u64,
    },
    CreateFolder {
        folder: String,
    },
    Move {
        file: String,
        folder: String,
    },
    ViewFolder {
        folder: String,
    },
    Checkpoint {
        file: String,
        tag: String,
    },
    ViewCheckpoint {
        file: String,
        tag: String,
    },
    Revert {
        file: String,
        tag: String,
    },
    ListCheckpoints {
        file: String,
    },
    Exec {
        file: String,
    },
    /// Cluster events for this many milliseconds (forever without).
    Watch {
        millis: Option<u64>,
    },
    Exit,
}

/// A line of a batch script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Blank or `#` comment.
    Nothing,
    Command(Command),
}

pub const COMMAND_NAMES: &[&str] = &[
    "VIEW",
    "READ",
    "CREATE",
    "WRITE",
    "UNDO",
    "INFO",
    "DELETE",
    "STREAM",
    "LIST",
    "STATUS",
    "ADDACCESS",
    "REMACCESS",
    "REQUESTACCESS",
    "VIEWREQUESTS",
    "APPROVE",
    "DENY",
    "CREATEFOLDER",
    "MOVE",
    "VIEWFOLDER",
    "CHECKPOINT",
    "VIEWCHECKPOINT",
    "REVERT",
    "LISTCHECKPOINTS",
    "EXEC",
    "WATCH",
    "EXIT",
];

fn access_flag(flag: &str) -> Option<Access> {
    match flag {
        "-R" | "-r" => Some(Access::Read),
        "-W" | "-w" => Some(Access::Write),
        _ => None,
    }
}

fn usage(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, message)
}

/// Parses one command line.
pub fn parse_line(line: &str) -> Result<Line, WireError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Nothing);
    }
    let mut parts = line.split_whitespace();
    let keyword = parts.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&str> = parts.collect();
    let one_file = |name: &str| match args.as_slice() {
        [file] => Ok((*file).to_owned()),
        _ => Err(usage(format!("usage: {name} <file>"))),
    };
    let command = match keyword.as_str() {
        "VIEW" => {
            let (mut all, mut long) = (false, false);
            for flag in &args {
                match flag.strip_prefix('-') {
                    Some(letters) if !letters.is_empty() => {
                        for c in letters.chars() {
                            match c {
                                'a' => all = true,
                                'l' => long = true,
                                _ => {
                                    return Err(usage(format!(
                                        "VIEW: unknown flag -{c}; use -a, -l or -al"
                                    )))
                                }
                            }
                        }
                    }
                    _ => return Err(usage("usage: VIEW [-a] [-l] [-al]")),
                }
            }
            Command::View { all, long }
        }
        "READ" => Command::Read {
            file: one_file("READ")?,
        },
        "CREATE" => Command::Create {
            file: one_file("CREATE")?,
        },
        "UNDO" => Command::Undo {
            file: one_file("UNDO")?,
        },
        "INFO" => Command::Info {
            file: one_file("INFO")?,
        },
        "DELETE" => Command::Delete {
            file: one_file("DELETE")?,
        },
        "STREAM" => Command::Stream {
            file: one_file("STREAM")?,
        },
        "WRITE" => match args.as_slice() {
            [file, sentence] => Command::Write {
                file: (*file).to_owned(),
                sentence: sentence.parse().map_err(|_| {
                    usage(format!(
                        "WRITE: sentence index {sentence:?} is not a number"
                    ))
                })?,
            },
            _ => {
                return Err(usage(
                    "usage: WRITE <file> <sentence_index>, then edit lines, then ETIRW",
                ))
            }
        },
        "ADDACCESS" => match args.as_slice() {
            [flag, file, user] if access_flag(flag).is_some() => Command::AddAccess {
                file: (*file).to_owned(),
                user: (*user).to_owned(),
                access: access_flag(flag).expect("checked"),
            },
            _ => return Err(usage("usage: ADDACCESS -R|-W <file> <user>")),
        },
        "REMACCESS" => match args.as_slice() {
            [file, user] => Command::RemAccess {
                file: (*file).to_owned(),
                user: (*user).to_owned(),
            },
            _ => return Err(usage("usage: REMACCESS <file> <user>")),
        },
        "REQUESTACCESS" => match args.as_slice() {
            [file, flag] if access_flag(flag).is_some() => Command::RequestAccess {
                file: (*file).to_owned(),
                access: access_flag(flag).expect("checked"),
            },
            _ => return Err(usage("usage: REQUESTACCESS <file> -R|-W")),
        },
        "APPROVE" | "DENY" => {
            let id = match args.as_slice() {
                [id] => id
                    .parse()
                    .map_err(|_| usage(format!("{keyword}: {id:?} is not a request id")))?,
                _ => return Err(usage(format!("usage: {keyword} <request_id>"))),
            };
            if keyword == "APPROVE" {
                Command::Approve { id }
            } else {
                Command::Deny { id }
            }
        }
        "CREATEFOLDER" => Command::CreateFolder {
            folder: one_file("CREATEFOLDER")?,
        },
        "VIEWFOLDER" => match args.as_slice() {
            [] => Command::ViewFolder {
                folder: String::new(),
            },
            [folder] => Command::ViewFolder {
                folder: (*folder).to_owned(),
            },
            _ => return Err(usage("usage: VIEWFOLDER [<folder>]")),
        },
        "MOVE" => match args.as_slice() {
            [file, folder] => Command::Move {
                file: (*file).to_owned(),
                folder: (*folder).to_owned(),
            },
            _ => return Err(usage("usage: MOVE <file> <folder>  (use / for the top)")),
        },
        "CHECKPOINT" | "VIEWCHECKPOINT" | "REVERT" => match args.as_slice() {
            [file, tag] => {
                let (file, tag) = ((*file).to_owned(), (*tag).to_owned());
                match keyword.as_str() {
                    "CHECKPOINT" => Command::Checkpoint { file, tag },
                    "VIEWCHECKPOINT" => Command::ViewCheckpoint { file, tag },
                    _ => Command::Revert { file, tag },
                }
            }
            _ => return Err(usage(format!("usage: {keyword} <file> <tag>"))),
        },
        "LISTCHECKPOINTS" => Command::ListCheckpoints {
            file: one_file("LISTCHECKPOINTS")?,
        },
        "EXEC" => Command::Exec {
            file: one_file("EXEC")?,
        },
        "WATCH" => match args.as_slice() {
            [] => Command::Watch { millis: None },
            [s] => match s.parse::<f64>() {
                Ok(seconds) if (0.0..1e9).contains(&seconds) => Command::Watch {
                    millis: Some((seconds * 1000.0) as u64),
                },
                _ => return Err(usage(format!("WATCH: {s:?} is not a number of seconds"))),
            },
            _ => return Err(usage("usage: WATCH [seconds]")),
        },
        "LIST" | "STATUS" | "EXIT" | "VIEWREQUESTS" if !args.is_empty() => {
            return Err(usage(format!("{keyword} takes no arguments")))
        }
        "LIST" => Command::List,
        "VIEWREQUESTS" => Command::ViewRequests,
        "STATUS" => Command::Status,
        "EXIT" => Command::Exit,
        other => {
            return Err(usage(format!(
                "unknown command {other:?}; commands: {}",
                COMMAND_NAMES.join(", ")
            )))
        }
    };
    Ok(Line::Command(command))
}

/// An edit line inside a WRITE: `<word_index> <content>`.
pub fn parse_edit(line: &str) -> Result<(i64, String), WireError> {
    let line = line.trim_start();
    let (index, content) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let index = index.parse().map_err(|_| {
        usage(format!(
            "edit lines are `<word_index> <content>`; {index:?} is not a word index"
        ))
    })?;
    Ok((index, content.trim().to_owned()))
}

/// Whether a line inside a WRITE ends it.
pub fn is_etirw(line: &str) -> bool {
    line.trim().eq_ignore_ascii_case("ETIRW")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_line("  # a comment").unwrap(), Line::Nothing);
        assert_eq!(parse_line("").unwrap(), Line::Nothing);
        assert_eq!(
            parse_line("VIEW -al").unwrap(),
            Line::Command(Command::View {
                all: true,
                long: true
            })
        );
        assert_eq!(
            parse_line("view -l").unwrap(),
            Line::Command(Command::View {
                all: false,
                long: true
            })
        );
        assert_eq!(
            parse_line("WRITE notes/a.txt 3").unwrap(),
            Line::Command(Command::Write {
                file: "notes/a.txt".into(),
                sentence: 3
            })
        );
        assert!(parse_line("WRITE a.txt x").is_err());
        assert!(parse_line("READ").is_err());
        assert!(parse_line("FROB x").is_err());
        assert!(parse_line("VIEW -z").is_err());
        assert_eq!(
            parse_line("ADDACCESS -W f bob").unwrap(),
            Line::Command(Command::AddAccess {
                file: "f".into(),
                user: "bob".into(),
                access: Access::Write
            })
        );
        assert!(parse_line("ADDACCESS -X f bob").is_err());
        assert_eq!(
            parse_line("REQUESTACCESS f -R").unwrap(),
            Line::Command(Command::RequestAccess {
                file: "f".into(),
                access: Access::Read
            })
        );
        assert_eq!(
            parse_line("APPROVE 3").unwrap(),
            Line::Command(Command::Approve { id: 3 })
        );
        assert!(parse_line("DENY x").is_err());
        assert_eq!(
            parse_line("VIEWCHECKPOINT f v1").unwrap(),
            Line::Command(Command::ViewCheckpoint {
                file: "f".into(),
                tag: "v1".into()
            })
        );
        assert_eq!(
            parse_line("MOVE a.txt docs").unwrap(),
            Line::Command(Command::Move {
                file: "a.txt".into(),
                folder: "docs".into()
            })
        );
    }

    #[test]
    fn edit_lines_parse() {
        assert_eq!(
            parse_edit("3 deeply mistaken").unwrap(),
            (3, "deeply mistaken".into())
        );
        assert_eq!(parse_edit("-1 x").unwrap(), (-1, "x".into()));
        assert!(parse_edit("x y").is_err());
        assert!(is_etirw(" etirw "));
    }
}
