//! `nm-seed`: gives a stopped nm a namespace of many files at once, in nm's
//! own formats: its journal (`--data-dir`) or its keys in etcd (`--etcd`).
//!
//! It exists for the benchmarks, which need nm to hold a million files
//! without creating them over the wire, and it keeps them talking to the
//! daemons over the wire only: the journal's records and the etcd layout
//! stay nm's business. Never run it against the journal of a running nm; in
//! etcd, the nm group must be restarted afterwards to load what it wrote.

use clap::Parser;
use color_eyre::eyre::{bail, Context, Result};
use nm::journal::Record;
use std::path::PathBuf;

/// Records `--files` files on storage server `--server` (as created there,
/// with empty access lists), and their owners as users.
///
/// With `--owners 1` (the default) the files are f000000, f000001, … owned
/// by `--owner`: the names `ss-seed` gives the files it writes. With
/// `--owners K` they are docsN/file-NNNNNNN.txt spread over K owners
/// user0 … user{K-1}, one folder each.
#[derive(Parser, Debug)]
#[command(name = "nm-seed", version)]
struct Args {
    /// nm's `--data-dir`: the records are appended to its journal.
    #[arg(
        long,
        env = "DOCS_NM_DATA_DIR",
        conflicts_with = "etcd",
        required_unless_present = "etcd"
    )]
    data_dir: Option<PathBuf>,
    /// nm's `--etcd` (a client URL): the records are written in nm's key layout.
    #[arg(long, env = "DOCS_NM_ETCD")]
    etcd: Option<String>,
    /// nm's `--etcd-prefix`.
    #[arg(long, default_value = "/docspp/", env = "DOCS_NM_ETCD_PREFIX")]
    etcd_prefix: String,
    /// How many files.
    #[arg(long)]
    files: usize,
    /// The storage server holding them.
    #[arg(long, default_value = "ss1")]
    server: String,
    /// How many owners the files are spread over.
    #[arg(long, default_value_t = 1)]
    owners: usize,
    /// The owner when there is one.
    #[arg(long, default_value = "bench")]
    owner: String,
}

impl Args {
    fn records(&self) -> Vec<Record> {
        let owners = self.owners.max(1);
        let owner = |i: usize| match owners {
            1 => self.owner.clone(),
            _ => format!("user{}", i % owners),
        };
        let mut records: Vec<Record> = (0..owners)
            .map(|u| Record::User { name: owner(u) })
            .collect();
        records.extend((0..self.files).map(|i| Record::FileCreated {
            file: match owners {
                1 => format!("f{i:06}"),
                _ => format!("docs{}/file-{i:07}.txt", i % owners),
            },
            owner: owner(i),
            server: self.server.clone(),
            acl: Default::default(),
        }));
        records
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    color_eyre::install()?;
    let args = Args::parse();
    let started = std::time::Instant::now();
    let records = args.records();
    let count = records.len();
    let to = match (&args.data_dir, &args.etcd) {
        (Some(dir), _) => {
            to_journal(dir, records).await?;
            dir.display().to_string()
        }
        (None, Some(url)) => {
            to_etcd(url, &args.etcd_prefix, records).await?;
            url.clone()
        }
        (None, None) => bail!("say where: --data-dir or --etcd"),
    };
    println!(
        "{count} records ({} files) written to {to} in {:.1} s",
        args.files,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn to_journal(dir: &std::path::Path, mut records: Vec<Record>) -> Result<()> {
    let (journal, _) = nm::journal::Journal::open(dir, false)
        .with_context(|| format!("opening the journal in {}", dir.display()))?;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(4096));
        journal.append(records).await?;
        records = rest;
    }
    Ok(())
}

#[cfg(feature = "etcd")]
async fn to_etcd(url: &str, prefix: &str, records: Vec<Record>) -> Result<()> {
    use nm::ha::etcd_client::{Client, Txn};
    use nm::ha::keys::{Layout, Translator};
    let mut etcd = Client::connect([url], None)
        .await
        .with_context(|| format!("connecting to etcd at {url}"))?;
    let mut translator = Translator::new(Layout::new(prefix), &Default::default());
    let writes = translator.translate(records, Default::default());
    for operations in nm::ha::store::transactions(&writes) {
        etcd.txn(Txn::new().and_then(operations)).await?;
    }
    Ok(())
}

#[cfg(not(feature = "etcd"))]
async fn to_etcd(_: &str, _: &str, _: Vec<Record>) -> Result<()> {
    bail!("this nm-seed was built without etcd (cargo build --features nm/etcd)")
}
