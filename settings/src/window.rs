//! The window: an `AdwPreferencesWindow` with two pages, "Service" (the connection, the
//! push server, the self-test) and "Apps" (each app's subscriptions and its notification
//! switch). It is redrawn from `view` whenever the bus side sends a new state.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use adw::prelude::*;
use futures_util::StreamExt;
use gtk::glib;
use tokio::sync::mpsc;

use crate::daemon::{self, Command, Update};
use crate::view::{self, Daemon, DaemonState, ServerChoice};

/// The window and what it shows now.
pub struct Ui {
    pub window: adw::PreferencesWindow,
    commands: mpsc::UnboundedSender<Command>,
    daemon: RefCell<Daemon>,
    /// Set while the window sets its own widgets, so their handlers do not act.
    updating: Cell<bool>,
    /// A once-a-second redraw of the connection runs (only while waiting to reconnect).
    counting: Cell<bool>,
    state_row: adw::ActionRow,
    error_row: adw::ActionRow,
    unavailable: adw::PreferencesGroup,
    unavailable_row: adw::ActionRow,
    connection: adw::PreferencesGroup,
    server: adw::PreferencesGroup,
    mozilla: gtk::CheckButton,
    local: gtk::CheckButton,
    custom: gtk::CheckButton,
    custom_entry: adw::EntryRow,
    custom_hint: adw::ActionRow,
    test_group: adw::PreferencesGroup,
    test_button: gtk::Button,
    test_rows: RefCell<Vec<adw::ActionRow>>,
    pub service_page: adw::PreferencesPage,
    pub apps_page: adw::PreferencesPage,
    app_groups: RefCell<Vec<adw::PreferencesGroup>>,
}

/// Build the window for `app`, start following the daemon, and show it.
pub fn present(app: &adw::Application) -> Rc<Ui> {
    let (tx, mut rx) = futures_channel::mpsc::unbounded();
    let commands = daemon::start(tx);
    let ui = build(app, commands);
    let quit_when_shown = std::env::var_os("WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN").is_some();
    // The window's updates keep it alive: this loop holds the one strong reference the
    // caller need not keep.
    let this = ui.clone();
    glib::spawn_future_local(async move {
        while let Some(u) = rx.next().await {
            if quit_when_shown && matches!(u, Update::State(_)) {
                quit_after_next_frame(&this);
            }
            this.apply(u);
            count_down(&this);
        }
    });
    // Times ("5 min ago") move on without the daemon saying anything.
    let weak = Rc::downgrade(&ui);
    glib::timeout_add_seconds_local(30, move || match weak.upgrade() {
        Some(ui) => {
            ui.redraw();
            glib::ControlFlow::Continue
        }
        None => glib::ControlFlow::Break,
    });
    ui.window.present();
    ui
}

/// For timing the start (`WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN=1`): once the daemon's state
/// is on screen, say when and quit.
fn quit_after_next_frame(ui: &Ui) {
    ui.window.add_tick_callback(|w, _| {
        let ms = crate::STARTED.get().map_or(0, |t| t.elapsed().as_millis());
        eprintln!("webpushd-settings: the daemon's state was on screen {ms} ms after start");
        if let Some(app) = w.application() {
            app.quit();
        }
        glib::ControlFlow::Break
    });
}

/// While the daemon waits to reconnect, "next attempt in …" counts down each second; no
/// timer runs otherwise (the window stays idle on battery).
fn count_down(ui: &Rc<Ui>) {
    if ui.counting.get() || !ui.waiting_to_reconnect() {
        return;
    }
    ui.counting.set(true);
    let weak = Rc::downgrade(ui);
    glib::timeout_add_seconds_local(1, move || {
        let Some(ui) = weak.upgrade() else {
            return glib::ControlFlow::Break;
        };
        if !ui.waiting_to_reconnect() {
            ui.counting.set(false);
            return glib::ControlFlow::Break;
        }
        if let Daemon::Running(s) = ui.daemon() {
            ui.updating.set(true);
            ui.draw_connection(&s);
            ui.updating.set(false);
        }
        glib::ControlFlow::Continue
    });
}

fn now_ms() -> i64 {
    glib::real_time() / 1000
}

fn build(app: &adw::Application, commands: mpsc::UnboundedSender<Command>) -> Rc<Ui> {
    let window = adw::PreferencesWindow::builder()
        .application(app)
        .title("Push Services")
        .default_width(640)
        .default_height(720)
        .search_enabled(false)
        .build();

    // Service page.
    let service = adw::PreferencesPage::builder()
        .title("Service")
        .icon_name("network-transmit-receive-symbolic")
        .build();

    let unavailable = adw::PreferencesGroup::builder()
        .title("The push daemon is not available")
        .visible(false)
        .build();
    let unavailable_row = adw::ActionRow::builder().title("Starting it…").build();
    let retry = gtk::Button::builder()
        .label("Try Again")
        .name("retry")
        .valign(gtk::Align::Center)
        .build();
    unavailable_row.add_suffix(&retry);
    unavailable.add(&unavailable_row);
    service.add(&unavailable);

    let connection = adw::PreferencesGroup::builder().title("Connection").build();
    let state_row = adw::ActionRow::builder()
        .title("Reading the daemon's state…")
        .build();
    let reconnect = gtk::Button::builder()
        .label("Reconnect")
        .valign(gtk::Align::Center)
        .tooltip_text("Drop the connection and connect again now")
        .build();
    state_row.add_suffix(&reconnect);
    let error_row = adw::ActionRow::builder()
        .title("Last error")
        .visible(false)
        .build();
    error_row.add_css_class("error");
    connection.add(&state_row);
    connection.add(&error_row);
    service.add(&connection);

    let server = adw::PreferencesGroup::builder()
        .title("Push Server")
        .description(
            "Every app moves with a new address; nothing is unsubscribed and no message is lost.",
        )
        .build();
    let check = |name: &str, title: &str, subtitle: &str, group: Option<&gtk::CheckButton>| {
        let b = gtk::CheckButton::builder()
            .valign(gtk::Align::Center)
            .name(name)
            .build();
        if let Some(g) = group {
            b.set_group(Some(g));
        }
        let row = adw::ActionRow::builder()
            .title(title)
            .subtitle(subtitle)
            .activatable_widget(&b)
            .build();
        row.add_prefix(&b);
        server.add(&row);
        b
    };
    let mozilla = check(
        "server:mozilla",
        "Mozilla's push service",
        "The default: push.services.mozilla.com",
        None,
    );
    let local = check(
        "server:local",
        "The local push service",
        "This computer only, for development and tests; runs when the daemon is configured with server_url = \"local\"",
        Some(&mozilla),
    );
    let custom = check(
        "server:custom",
        "Another server",
        "An autopush server of your own",
        Some(&mozilla),
    );
    let custom_entry = adw::EntryRow::builder()
        .title("Server address (wss://…)")
        .show_apply_button(true)
        .name("server:custom-url")
        .build();
    let custom_hint = adw::ActionRow::builder().visible(false).build();
    custom_hint.add_css_class("error");
    server.add(&custom_entry);
    server.add(&custom_hint);
    service.add(&server);

    let test_group = adw::PreferencesGroup::builder()
        .title("Self-Test")
        .description("Sends a real push through the server to a temporary subscription and checks it comes back intact.")
        .build();
    let test_button = gtk::Button::builder()
        .label("Run Test")
        .valign(gtk::Align::Center)
        .name("selftest-run")
        .build();
    test_group.set_header_suffix(Some(&test_button));
    service.add(&test_group);
    window.add(&service);

    let apps_page = adw::PreferencesPage::builder()
        .title("Apps")
        .icon_name("view-app-grid-symbolic")
        .build();
    window.add(&apps_page);

    let ui = Rc::new(Ui {
        window,
        commands,
        daemon: RefCell::new(Daemon::Loading),
        updating: Cell::new(false),
        counting: Cell::new(false),
        state_row,
        error_row,
        unavailable,
        unavailable_row,
        connection,
        server,
        mozilla,
        local,
        custom,
        custom_entry,
        custom_hint,
        test_group,
        test_button,
        test_rows: RefCell::new(Vec::new()),
        service_page: service,
        apps_page,
        app_groups: RefCell::new(Vec::new()),
    });

    let u = Rc::downgrade(&ui);
    retry.connect_clicked(move |_| {
        if let Some(ui) = u.upgrade() {
            ui.unavailable_row.set_title("Starting it…");
            ui.send(Command::Start);
        }
    });
    let u = Rc::downgrade(&ui);
    reconnect.connect_clicked(move |_| {
        if let Some(ui) = u.upgrade() {
            ui.send(Command::Reconnect);
        }
    });
    for (button, choice) in [
        (ui.mozilla.clone(), ServerChoice::Mozilla),
        (ui.local.clone(), ServerChoice::Local),
    ] {
        let u = Rc::downgrade(&ui);
        button.connect_toggled(move |b| {
            if let Some(ui) = u.upgrade() {
                if b.is_active() && !ui.updating.get() {
                    ui.send(Command::SetServer(view::server_url(&choice)));
                }
            }
        });
    }
    let u = Rc::downgrade(&ui);
    ui.custom.connect_toggled(move |b| {
        if let Some(ui) = u.upgrade() {
            if b.is_active() && !ui.updating.get() {
                ui.custom_entry.grab_focus();
            }
        }
    });
    let u = Rc::downgrade(&ui);
    ui.custom_entry.connect_apply(move |e| {
        if let Some(ui) = u.upgrade() {
            match view::validate_custom(&e.text()) {
                Ok(url) => {
                    ui.custom_hint.set_visible(false);
                    ui.send(Command::SetServer(url));
                }
                Err(why) => {
                    ui.custom_hint.set_title(&why);
                    ui.custom_hint.set_visible(true);
                }
            }
        }
    });
    let u = Rc::downgrade(&ui);
    ui.test_button.connect_clicked(move |b| {
        if let Some(ui) = u.upgrade() {
            for row in ui.test_rows.take() {
                ui.test_group.remove(&row);
            }
            b.set_sensitive(false);
            b.set_label("Testing…");
            ui.send(Command::SelfTest);
        }
    });
    ui
}

impl Ui {
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    /// What the window shows of the daemon now.
    pub fn daemon(&self) -> Daemon {
        self.daemon.borrow().clone()
    }

    pub fn apply(&self, u: Update) {
        match u {
            Update::State(d) => {
                *self.daemon.borrow_mut() = d;
                self.redraw();
            }
            Update::Step(step) => {
                let row = adw::ActionRow::builder()
                    .title(view::step_label(step.name))
                    .subtitle_lines(2)
                    .subtitle(format!("{} · {} ms", step.detail, step.elapsed.as_millis()))
                    .build();
                row.set_widget_name(&format!("selftest:{}", step.name));
                let icon = if step.ok {
                    "emblem-ok-symbolic"
                } else {
                    "dialog-error-symbolic"
                };
                row.add_prefix(&gtk::Image::from_icon_name(icon));
                if !step.ok {
                    row.add_css_class("error");
                }
                self.test_group.add(&row);
                self.test_rows.borrow_mut().push(row);
            }
            Update::SelfTestDone(ok) => {
                self.test_button.set_sensitive(true);
                self.test_button.set_label("Run Again");
                self.toast(if ok {
                    "The push server works"
                } else {
                    "The self-test failed: see the step marked in red"
                });
            }
            Update::Failed(why) => {
                eprintln!("webpushd-settings: {why}");
                self.toast(&why);
            }
        }
    }

    fn toast(&self, text: &str) {
        let t = adw::Toast::new(text);
        t.set_timeout(6);
        self.window.add_toast(t);
    }

    fn waiting_to_reconnect(&self) -> bool {
        matches!(&*self.daemon.borrow(), Daemon::Running(s) if s.state == "backoff")
    }

    /// Draw the window from the state last read.
    pub fn redraw(&self) {
        self.updating.set(true);
        let daemon = self.daemon.borrow().clone();
        match &daemon {
            Daemon::Loading => {}
            Daemon::Unavailable(why) => {
                self.unavailable.set_visible(true);
                self.unavailable_row.set_title(why);
                for g in [&self.connection, &self.server, &self.test_group] {
                    g.set_visible(false);
                }
                self.draw_apps(None);
            }
            Daemon::Running(s) => {
                self.unavailable.set_visible(false);
                for g in [&self.connection, &self.server, &self.test_group] {
                    g.set_visible(true);
                }
                self.draw_connection(s);
                self.draw_apps(Some(s));
            }
        }
        self.updating.set(false);
    }

    fn draw_connection(&self, s: &DaemonState) {
        let c = view::connection(s, now_ms());
        self.state_row.set_title(&c.title);
        self.state_row.set_subtitle(&c.subtitle);
        self.error_row.set_visible(c.error.is_some());
        self.error_row
            .set_subtitle(c.error.as_deref().unwrap_or(""));
        match view::server_choice(&s.server_url) {
            ServerChoice::Mozilla => self.mozilla.set_active(true),
            ServerChoice::Local => self.local.set_active(true),
            ServerChoice::Custom(url) => {
                self.custom.set_active(true);
                if self.custom_entry.text().is_empty() {
                    self.custom_entry.set_text(&url);
                }
            }
        }
    }

    fn draw_apps(&self, s: Option<&DaemonState>) {
        for g in self.app_groups.take() {
            self.apps_page.remove(&g);
        }
        let apps = s.map(|s| view::apps(s, now_ms())).unwrap_or_default();
        let mut groups = Vec::new();
        if apps.is_empty() {
            let g = adw::PreferencesGroup::builder()
                .title("No app uses push yet")
                .description("Apps appear here once they subscribe.")
                .build();
            groups.push(g);
        }
        for app in apps {
            let g = adw::PreferencesGroup::builder().title(&app.app_id).build();
            let switch = gtk::Switch::builder()
                .valign(gtk::Align::Center)
                .active(app.notifications_allowed)
                .build();
            switch.set_widget_name(&format!("notifications:{}", app.app_id));
            let row = adw::ActionRow::builder()
                .title("Desktop notifications")
                .subtitle("Show this app's push messages as notifications")
                .activatable_widget(&switch)
                .build();
            row.add_suffix(&switch);
            let commands = self.commands.clone();
            let app_id = app.app_id.clone();
            switch.connect_active_notify(move |sw| {
                let _ = commands.send(Command::SetNotifications {
                    app_id: app_id.clone(),
                    allowed: sw.is_active(),
                });
            });
            g.add(&row);
            for sub in app.subscriptions {
                g.add(&self.subscription_row(sub));
            }
            groups.push(g);
        }
        for g in &groups {
            self.apps_page.add(g);
        }
        *self.app_groups.borrow_mut() = groups;
    }

    fn subscription_row(&self, sub: view::SubscriptionView) -> adw::ActionRow {
        let row = adw::ActionRow::builder()
            .title(&sub.title)
            .subtitle(&sub.subtitle)
            .build();
        row.set_widget_name(&format!("subscription:{}", sub.path));
        if sub.expired {
            row.add_prefix(&gtk::Image::from_icon_name("dialog-warning-symbolic"));
        }
        if sub.quota_applies {
            let reset = gtk::Button::builder()
                .icon_name("view-refresh-symbolic")
                .tooltip_text("Reset quota")
                .valign(gtk::Align::Center)
                .css_classes(["flat"])
                .build();
            let (commands, path) = (self.commands.clone(), sub.path.clone());
            reset.connect_clicked(move |_| {
                let _ = commands.send(Command::ResetQuota(path.clone()));
            });
            row.add_suffix(&reset);
        }
        let remove = gtk::Button::builder()
            .icon_name("user-trash-symbolic")
            .tooltip_text("Remove")
            .valign(gtk::Align::Center)
            .css_classes(["flat"])
            .build();
        let (commands, path, title) = (self.commands.clone(), sub.path, sub.title);
        let window = self.window.clone();
        remove.connect_clicked(move |_| confirm_remove(&window, &title, &path, &commands));
        row.add_suffix(&remove);
        row
    }
}

/// Removing unsubscribes the app for good: ask first.
fn confirm_remove(
    window: &adw::PreferencesWindow,
    title: &str,
    path: &str,
    commands: &mpsc::UnboundedSender<Command>,
) {
    let dialog = adw::MessageDialog::builder()
        .transient_for(window)
        .modal(true)
        .heading(format!("Remove “{title}”?"))
        .body("The app stops receiving these pushes and is told its subscription ended.")
        .build();
    dialog.add_response("cancel", "Cancel");
    dialog.add_response("remove", "Remove");
    dialog.set_response_appearance("remove", adw::ResponseAppearance::Destructive);
    dialog.set_default_response(Some("cancel"));
    let (commands, path) = (commands.clone(), path.to_string());
    dialog.connect_response(None, move |_, response| {
        if response == "remove" {
            let _ = commands.send(Command::Remove(path.clone()));
        }
    });
    dialog.present();
}

/// Every title, subtitle and label in `root`'s tree, in order: what a person reads.
pub fn texts(root: &impl IsA<gtk::Widget>) -> Vec<String> {
    let mut out = Vec::new();
    collect(root.upcast_ref(), &mut out);
    out
}

fn collect(w: &gtk::Widget, out: &mut Vec<String>) {
    if !w.is_visible() {
        return;
    }
    if let Some(l) = w.downcast_ref::<gtk::Label>() {
        let t = l.text();
        if !t.is_empty() {
            out.push(t.to_string());
        }
    }
    let mut child = w.first_child();
    while let Some(c) = child {
        collect(&c, out);
        child = c.next_sibling();
    }
}

/// The widget named `name` in `root`'s tree (the window names its switches and rows).
pub fn find(root: &impl IsA<gtk::Widget>, name: &str) -> Option<gtk::Widget> {
    fn walk(w: &gtk::Widget, name: &str) -> Option<gtk::Widget> {
        if w.widget_name() == name {
            return Some(w.clone());
        }
        let mut child = w.first_child();
        while let Some(c) = child {
            if let Some(found) = walk(&c, name) {
                return Some(found);
            }
            child = c.next_sibling();
        }
        None
    }
    walk(root.upcast_ref(), name)
}
