//! `inspect`: one request (`-R`) or an interactive session over an image's metadata,
//! as upstream 2.2.0's `nydus-image inspect`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use nydus_image::ops::inspect::{InspectError, Inspector, Reply, Request};
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

use crate::args::{BackendArgs, LogLevel};

/// The shell's prompt (upstream's), shown when standard input is a terminal.
const PROMPT: &str = "Inspecting RAFS :> ";

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Bootstrap to inspect, or a data blob with inline metadata.
    #[arg(value_name = "BOOTSTRAP", conflicts_with = "bootstrap")]
    bootstrap_pos: Option<PathBuf>,
    /// [Deprecated] the bootstrap, as a flag.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Directory of the image's blobs (not needed: inspect reads metadata only).
    #[arg(short = 'D', long = "blob-dir", conflicts_with = "config")]
    blob_dir: Option<PathBuf>,
    /// nydusd configuration file (upstream's flag; read and checked to be JSON only).
    #[arg(short = 'C', long = "config")]
    config: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// One request, answered on standard output (JSON for stats, blobs and prefetch):
    /// stats, ls, cd DIR, stat NAME, blobs, prefetch, chunk OFFSET, icheck INODE, help.
    #[arg(short = 'R', long = "request")]
    request: Option<String>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `inspect` request.
pub struct InspectOptions {
    bootstrap: PathBuf,
    source: BlobSource,
    request: Option<Request>,
}

impl InspectArgs {
    /// Checks the flags (and the request, before the image is opened).
    pub fn options(self) -> Result<InspectOptions> {
        let bootstrap = self
            .bootstrap
            .or(self.bootstrap_pos)
            .ok_or_else(|| anyhow!("give the bootstrap to inspect (BOOTSTRAP or --bootstrap)"))?;
        if let Some(config) = &self.config {
            let text = std::fs::read_to_string(config)
                .with_context(|| format!("cannot read {}", config.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not JSON", config.display()))?;
        }
        let source = match (self.backend.backend()?, &self.blob_dir) {
            (Some(_), Some(_)) => bail!("give either a backend or --blob-dir, not both"),
            (Some(b), None) => BlobSource::Backend(std::sync::Arc::from(b)),
            (None, Some(d)) => BlobSource::Dir(d.clone()),
            (None, None) => BlobSource::None,
        };
        let request = match &self.request {
            None => None,
            Some(line) => Some(
                Request::parse(line)?
                    .ok_or_else(|| anyhow!("--request is empty: {}", usage_line()))?,
            ),
        };
        Ok(InspectOptions {
            bootstrap,
            source,
            request,
        })
    }
}

fn usage_line() -> String {
    InspectError::Unsupported {
        request: String::new(),
    }
    .to_string()
}

/// Answers the request, or runs the shell over standard input.
pub fn run(opts: InspectOptions) -> Result<ExitCode> {
    let image = Image::open_any(&opts.bootstrap, opts.source)?;
    let mut inspector = Inspector::new(image)?;
    let mut out = std::io::stdout().lock();
    if let Some(req) = opts.request {
        let reply = inspector.execute(&req)?;
        out.write_all(reply.text(true).as_bytes())?;
        if !matches!(reply, Reply::Help | Reply::Exit) {
            // Upstream prints `null` after the requests it answers in text.
            serde_json::to_writer(&mut out, &reply.json())?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = std::io::stdin();
    let prompt = stdin.is_terminal();
    let mut lines = stdin.lock();
    loop {
        if prompt {
            out.write_all(PROMPT.as_bytes())?;
            out.flush()?;
        }
        let mut line = String::new();
        if lines
            .read_line(&mut line)
            .context("reading standard input")?
            == 0
        {
            break;
        }
        let req = match Request::parse(&line) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(e) => {
                writeln!(out, "{e}")?;
                continue;
            }
        };
        match inspector.execute(&req) {
            Ok(Reply::Exit) => break,
            Ok(reply) => out.write_all(reply.text(false).as_bytes())?,
            Err(e) => writeln!(
                out,
                "Failed to execute command, {:#}",
                anyhow::Error::from(e)
            )?,
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
