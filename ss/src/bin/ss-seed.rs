//! `ss-seed`: fills a stopped storage server's folder with many files at
//! once, in the server's own on-disk format (the way `mkfs` prepares a disk).
//!
//! It exists for the benchmarks, which need a primary holding a million
//! files without spending an hour creating them over the wire, and it keeps
//! them talking to the daemons over the wire only: the storage format stays
//! the storage server's business. Never run it on the folder of a running
//! server.

use clap::Parser;
use color_eyre::eyre::{bail, Context, Result};
use shared::proto::{FileMeta, FileStats};
use ss::store::{Store, STORE_ID};
use std::path::PathBuf;

/// Writes `--files` files named f000000, f000001, … of `--size` bytes each
/// (lorem ipsum sentences) into a storage folder, owned by `--owner`, at
/// version 1, then flushes the disk.
#[derive(Parser, Debug)]
#[command(name = "ss-seed", version)]
struct Args {
    /// The storage folder (a storage server's `--storage`), created if missing.
    #[arg(long, env = "DOCS_SS_STORAGE")]
    storage: PathBuf,
    /// How many files.
    #[arg(long)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 64)]
    size: u64,
    /// The owner of every file.
    #[arg(long, default_value = "bench")]
    owner: String,
    /// Leave a folder that already holds a store alone (and say so) instead
    /// of refusing it.
    #[arg(long)]
    if_empty: bool,
}

fn main() -> Result<()> {
    color_eyre::install()?;
    let args = Args::parse();
    if args.storage.join(STORE_ID).exists() {
        if args.if_empty {
            println!(
                "{} already holds a store; left alone",
                args.storage.display()
            );
            return Ok(());
        }
        bail!(
            "{} already holds a store; seed only a new folder (or pass --if-empty)",
            args.storage.display()
        );
    }
    std::fs::create_dir_all(&args.storage)
        .with_context(|| format!("creating {}", args.storage.display()))?;
    let started = std::time::Instant::now();
    seed(&args).with_context(|| format!("seeding {}", args.storage.display()))?;
    // What the measured runs copy should not include flushing this.
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    println!(
        "{} files of {} bytes written to {} in {:.1} s",
        args.files,
        args.size,
        args.storage.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn seed(args: &Args) -> Result<()> {
    let store = Store::open(&args.storage, false)?;
    let line: Vec<u8> = b"lorem ipsum dolor sit amet. ".repeat(2341); // ~64 KiB
    let now = shared::now_ms();
    for i in 0..args.files {
        let name = format!("f{i:06}");
        let mut temp = store.temp_file()?;
        let mut left = args.size;
        while left > 0 {
            let n = left.min(line.len() as u64) as usize;
            temp.write_all(&line[..n])?;
            left -= n as u64;
        }
        let meta = FileMeta {
            owner: args.owner.clone(),
            acl: Default::default(),
            checkpoints: Default::default(),
            stats: FileStats {
                size: args.size,
                version: 1,
                created_ms: now,
                modified_ms: now,
                ..FileStats::default()
            },
        };
        let separate = store.attach_meta(&mut temp, &name, &meta)?;
        let mut placed = Default::default();
        store.place_with_meta(temp, separate, &name, &mut placed)?;
        store.sync_dirs(&mut placed)?;
    }
    Ok(())
}
