//! How `repl-lag` sees a write arrive in the backup's file: one thread that
//! checks the backup's files for each awaited text, either when the kernel
//! says one of them changed (`inotify`, the default) or every 50 µs while
//! anything is awaited (`poll`, the method of the earlier runs).
//!
//! The two differ in what they cost, not in what they see: the backup puts
//! every new version in place by a rename (or a write closed in place), and
//! inotify reports that rename the moment it happens, so the thread reads
//! the file when the text can first be there instead of up to one poll
//! later. Polling 20,000 times a second while writes are in flight takes a
//! good part of one of this machine's two cores from the daemons it
//! measures; at half the maximum write rate that is enough to move the p99.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the backup's files are read, with `--lag-watch poll`, while a
/// write's text is awaited.
const LAG_POLL: Duration = Duration::from_micros(50);
/// A write whose text has not reached the backup after this long is counted unseen.
pub const LAG_GIVE_UP: Duration = Duration::from_secs(5);
/// With inotify, the files are read again at least this often (for
/// give-ups, and as a fallback should an event be missed).
const INOTIFY_RECHECK_MS: i32 = 10;

/// How the watcher learns that a backup file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LagWatch {
    /// Woken by the kernel (inotify) when a file in the backup's folder is
    /// renamed into place or written.
    Inotify,
    /// Reads every awaited file every 50 µs while any text is awaited.
    Poll,
}

/// A write whose text is awaited in the backup's file.
struct AwaitedText {
    path: PathBuf,
    text: Vec<u8>,
    acked: Instant,
    seen: tokio::sync::oneshot::Sender<Option<Duration>>,
}

/// The awaited texts, shared by the clients (which add them) and the one
/// watching thread (one reader for every client, so the measuring does not
/// crowd out what it measures on a small machine).
pub struct BackupWatch {
    awaited: Mutex<Vec<AwaitedText>>,
    wake: std::sync::Condvar,
    stop: AtomicBool,
    /// With inotify: a byte written here wakes the thread for a new text.
    doorbell: Option<(UnixStream, Mutex<UnixStream>)>,
}

impl BackupWatch {
    pub fn new(how: LagWatch) -> std::io::Result<Self> {
        let doorbell = match how {
            LagWatch::Poll => None,
            LagWatch::Inotify => {
                let (bell, ear) = UnixStream::pair()?;
                bell.set_nonblocking(true)?;
                ear.set_nonblocking(true)?;
                Some((ear, Mutex::new(bell)))
            }
        };
        Ok(Self {
            awaited: Mutex::default(),
            wake: std::sync::Condvar::new(),
            stop: AtomicBool::new(false),
            doorbell,
        })
    }

    /// Resolves to the time from `acked` until `path` holds `text` (zero if
    /// it did at the first look), or `None` past [`LAG_GIVE_UP`].
    pub fn expect(
        &self,
        path: PathBuf,
        text: Vec<u8>,
        acked: Instant,
    ) -> tokio::sync::oneshot::Receiver<Option<Duration>> {
        let (seen, rx) = tokio::sync::oneshot::channel();
        self.awaited.lock().unwrap().push(AwaitedText {
            path,
            text,
            acked,
            seen,
        });
        self.wake.notify_one();
        if let Some((_, bell)) = &self.doorbell {
            // A full socket already rings.
            let _ = bell.lock().unwrap().write(&[1]);
        }
        rx
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        if let Some((_, bell)) = &self.doorbell {
            let _ = bell.lock().unwrap().write(&[1]);
        }
    }

    /// The watching thread's body, for the files in `folder`.
    pub fn run(&self, folder: &Path) -> std::io::Result<()> {
        match &self.doorbell {
            None => {
                self.poll_loop();
                Ok(())
            }
            Some((ear, _)) => self.inotify_loop(folder, ear),
        }
    }

    /// Waits until some text is awaited (or the watch stops: `None`).
    fn next_awaited(&self) -> Option<Vec<AwaitedText>> {
        let mut awaited = self.awaited.lock().unwrap();
        while awaited.is_empty() {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            awaited = self
                .wake
                .wait_timeout(awaited, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        Some(std::mem::take(&mut *awaited))
    }

    fn poll_loop(&self) {
        while let Some(mut pending) = self.next_awaited() {
            loop {
                pending = check(pending, |_| true);
                pending.extend(std::mem::take(&mut *self.awaited.lock().unwrap()));
                if pending.is_empty() {
                    break;
                }
                std::thread::sleep(LAG_POLL);
            }
        }
    }

    fn inotify_loop(&self, folder: &Path, ear: &UnixStream) -> std::io::Result<()> {
        use rustix::fs::inotify;
        let events: OwnedFd = inotify::init(inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &events,
            folder,
            inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
        )?;
        let mut buffer = vec![std::mem::MaybeUninit::uninit(); 64 * 1024];
        let mut pending: Vec<AwaitedText> = Vec::new();
        loop {
            if pending.is_empty() {
                match self.next_awaited() {
                    // A new text may be there already: look once.
                    Some(new) => pending = check(new, |_| true),
                    None => return Ok(()),
                }
                continue;
            }
            wait_readable(&[events.as_fd().as_raw_fd(), ear.as_raw_fd()])?;
            let mut changed: Vec<PathBuf> = Vec::new();
            let mut overflowed = false;
            let mut reader = inotify::Reader::new(&events, &mut buffer);
            loop {
                match reader.next() {
                    Ok(event) => {
                        if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                            overflowed = true;
                        }
                        if let Some(name) = event.file_name() {
                            use std::os::unix::ffi::OsStrExt;
                            let name = std::ffi::OsStr::from_bytes(name.to_bytes());
                            changed.push(folder.join(name));
                        }
                    }
                    Err(rustix::io::Errno::WOULDBLOCK) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let mut rung = false;
            let mut ring = [0u8; 64];
            while matches!((&*ear).read(&mut ring), Ok(n) if n > 0) {
                rung = true;
            }
            // The files named by an event are read now; every awaited file
            // at a recheck (nothing happened for a while) or a lost event.
            let recheck = overflowed || changed.is_empty() && !rung;
            pending = check(pending, |path| recheck || changed.iter().any(|c| c == path));
            let new = std::mem::take(&mut *self.awaited.lock().unwrap());
            pending.extend(check(new, |_| true));
        }
    }
}

/// Blocks until one of `fds` is readable, or [`INOTIFY_RECHECK_MS`] passed.
fn wait_readable(fds: &[i32]) -> std::io::Result<()> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polled` is a live, correctly sized array of pollfd for the
    // whole call, and the descriptors stay open (borrowed from the caller).
    let n = unsafe {
        libc::poll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            INOTIFY_RECHECK_MS,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Reads the files of the texts `look_at` picks (each file once) and
/// resolves the texts found, or given up; returns the rest.
fn check(awaited: Vec<AwaitedText>, look_at: impl Fn(&Path) -> bool) -> Vec<AwaitedText> {
    let mut contents: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut still = Vec::new();
    for wait in awaited {
        if look_at(&wait.path) {
            let held = contents
                .entry(wait.path.clone())
                .or_insert_with(|| std::fs::read(&wait.path).unwrap_or_default());
            if held.windows(wait.text.len()).any(|w| w == wait.text) {
                let _ = wait.seen.send(Some(wait.acked.elapsed()));
                continue;
            }
        }
        if wait.acked.elapsed() > LAG_GIVE_UP {
            let _ = wait.seen.send(None);
        } else {
            still.push(wait);
        }
    }
    still
}
