//! `shoal events tail`: follow the CloudEvents stream.

use clap::Subcommand;

use super::*;

#[derive(Subcommand, Debug)]
pub(super) enum EventsCommand {
    /// Print events as they happen, one CloudEvents JSON per line.
    Tail {
        /// Subject filter, e.g. `shoal.evt.plugin.>` (default: every event).
        subject: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn tail(subject: Option<String>, remote: Remote) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let mut request = client.http.get(client.url("/v1/events"));
    if let Some(s) = &subject {
        request = request.query(&[("subject", s)]);
    }
    client.each_event(request, |data| println!("{data}")).await
}
