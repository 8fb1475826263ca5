//! `kahuna-server`: parse the configuration, start the node, exit non-zero with the reason if
//! it cannot start (the codes are in [`kahuna_server::fatal`]).

use kahuna_server::fatal;

fn main() {
    fatal::install_panic_hook();
    let cfg = match kahuna_server::config::NodeConfig::from_args() {
        Ok(c) => c,
        Err(e) => fatal::exit_now(fatal::EXIT_CONFIG, &e.to_string()),
    };
    if let Err(e) = kahuna_server::logging::init(&cfg.log_format, &cfg.log_level) {
        fatal::exit_now(fatal::EXIT_CONFIG, &e);
    }
    kahuna_server::faults::start(&cfg.data_dir);
    if let Err(e) = kahuna_server::node::run(cfg) {
        fatal::exit_now(e.exit_code(), &e.to_string());
    }
}
