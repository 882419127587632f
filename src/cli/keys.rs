//! `keys`: the gateway's key material, on the gateway host.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Replace the recording signing key. The old public key stays in
    /// data/keys/recording.pub so old recordings still verify; restart the gateway to
    /// sign with the new key.
    RotateRecording,
}

pub fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::RotateRecording => {
            let (old, new) = crate::keys::rotate_recording_key(&config.data_dir)?;
            println!("recording key rotated: {old} -> {new}");
            println!("both stay trusted for verification; restart the gateway to sign with {new}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
