//! `webpushd-settings`: open the Push Services window (one per session: a second start
//! brings the first window forward).

use adw::prelude::*;
use gtk::glib;

fn main() -> glib::ExitCode {
    let _ = webpushd_settings::STARTED.set(std::time::Instant::now());
    let app = adw::Application::builder()
        .application_id(webpushd_settings::APP_ID)
        .build();
    app.connect_activate(|app| match app.active_window() {
        Some(w) => w.present(),
        None => {
            webpushd_settings::window::present(app);
        }
    });
    app.run()
}
