//! What the command line shares: writing to standard output without panicking on a closed
//! pipe, how a command fails (and with which exit status), and the client commands
//! (`eucora deployments …`) that work against a running server.

pub mod client;
pub mod describe;
pub mod table;

use std::process::ExitCode;

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Said on stderr; exit status 1.
    Message(String),
    /// The server refused the request (4xx); its detail is said on stderr; exit status 3.
    Refused(String),
    /// Standard output was closed by its reader: stop quietly, as `cat` would.
    OutputClosed,
}

/// The exit status of a command refused by the server.
pub const EXIT_REFUSED: u8 = 3;

impl Failure {
    /// Says why on stderr and gives the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::OutputClosed => ExitCode::SUCCESS,
            Failure::Message(message) => {
                eprintln!("eucora: {message}");
                ExitCode::FAILURE
            }
            Failure::Refused(message) => {
                eprintln!("eucora: refused: {message}");
                ExitCode::from(EXIT_REFUSED)
            }
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Message(message.to_string())
    }
}

/// Writes one line to standard output; a closed pipe ends the command quietly instead of
/// panicking, as `println!` would.
pub fn say(line: std::fmt::Arguments) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::OutputClosed),
        Err(e) => Err(Failure::Message(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}
