"""The staff console in real headless Chromium, driven by Playwright (system browser).

Run by `tools/andectl/tests/console_browser.rs`, which starts the real stack (NATS, Postgres,
every service, the WeChat simulator), makes the accounts and the customer actions, and passes
what this script needs in the environment. Exits non-zero (with the failing step) on any
mismatch; saves screenshots of the main pages to CONSOLE_SHOTS.
"""

import json
import os
import sys
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

E = os.environ
BASE = E["CONSOLE_URL"].rstrip("/")
SIM = E["SIM_URL"].rstrip("/")
SHOTS = E.get("CONSOLE_SHOTS", "target/console-screenshots")
CHROMIUM = E.get("CHROMIUM", "/usr/bin/chromium")
expect.set_options(timeout=15_000)


def step(name):
    print(f"[console] {name}", flush=True)


def sim_messages(openid):
    with urllib.request.urlopen(f"{SIM}/sim/messages?touser={openid}", timeout=5) as r:
        body = json.load(r)
    return body if isinstance(body, list) else body.get("messages", body.get("data", []))


def sign_in(page, username, password):
    page.goto(f"{BASE}/console/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def shot(page, name):
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, name), full_page=True)


def admin_walk(page):
    step("a wrong password is refused")
    sign_in(page, E["ADMIN_USER"], "not-the-password")
    expect(page.locator("#login-error")).to_have_text("用户名或密码错误")

    step("the admin signs in and finds the lead by phone")
    sign_in(page, E["ADMIN_USER"], E["ADMIN_PASSWORD"])
    expect(page.locator("#who")).to_contain_text(E["ADMIN_USER"])
    expect(page.locator("table")).to_contain_text(E["PHONE"])
    shot(page, "leads.png")
    page.fill("input[name=q]", E["PHONE"])
    page.click("form.filters button[type=submit]")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td.phone")).to_have_text(E["PHONE"])

    step("its timeline shows the action, the lead and the failed message")
    rows.first.locator("a").click()
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("查看简历")
    expect(timeline).to_contain_text("新建线索")
    expect(timeline).to_contain_text("失败")
    expect(timeline).to_contain_text("errcode 40003")

    step("the failed notification is retried and reaches the simulator")
    page.goto(f"{BASE}/console/#/notifications")
    retry = page.locator("button[data-retry]")
    expect(retry).to_have_count(1)
    retry.click()
    expect(page.locator("#status")).to_contain_text("已重新排队")
    deadline = time.time() + 20
    while not sim_messages(E["OPENID"]):
        if time.time() > deadline:
            raise AssertionError("the retried message never reached the simulator")
        time.sleep(0.2)
    page.goto(f"{BASE}/console/#/leads?q={E['PHONE']}")
    page.locator("tbody tr a").first.click()
    expect(page.locator("#timeline")).to_contain_text("已发送")
    shot(page, "lead.png")

    step("a status change shows in the lead's history")
    page.select_option("select[name=status]", "跟进中")
    page.click("form.stack button[type=submit]")
    expect(page.locator("#status")).to_have_text("修改已生效")
    expect(page.locator("main")).to_contain_text("status 待定 → 跟进中")

    step("overview, advisors, accounts")
    page.goto(f"{BASE}/console/#/overview")
    expect(page.locator("main h1")).to_have_text("概览")
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("main")).to_contain_text("消费者积压")
    shot(page, "overview.png")
    page.goto(f"{BASE}/console/#/advisors")
    expect(page.locator("main h1")).to_have_text("顾问")
    expect(page.locator("main table")).to_contain_text(E["ADVISOR"])
    shot(page, "advisors.png")
    page.goto(f"{BASE}/console/#/dead-letters")
    expect(page.locator("main h1")).to_have_text("死信")
    expect(page.locator("main")).to_contain_text("共 0 条")
    page.goto(f"{BASE}/console/#/users")
    expect(page.locator("main h1")).to_have_text("员工账号")
    expect(page.locator("main table")).to_contain_text(E["SALES_USER"])
    page.click("#logout")
    expect(page.locator("input[name=username]")).to_be_visible()


def sales_walk(page):
    step("a sales user sees their advisor's lead and not another advisor's")
    sign_in(page, E["SALES_USER"], E["SALES_PASSWORD"])
    expect(page.locator("table")).to_contain_text(E["PHONE"])
    expect(page.locator("table")).not_to_contain_text(E["OTHER_PHONE"])
    expect(page.locator("nav a[data-page=users]")).to_be_hidden()
    expect(page.locator("nav a[data-page=dead-letters]")).to_be_hidden()
    page.goto(f"{BASE}/console/#/leads?q={E['OTHER_PHONE']}")
    expect(page.locator("tbody")).to_contain_text("暂无数据")
    page.goto(f"{BASE}/console/#/lead/{E['OTHER_LEAD']}")
    expect(page.locator("main [role=alert]")).to_contain_text("no such lead")


def mobile_walk(browser):
    step("the leads table on a phone screen")
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = ctx.new_page()
    sign_in(page, E["ADMIN_USER"], E["ADMIN_PASSWORD"])
    expect(page.locator("table")).to_contain_text(E["PHONE"])
    shot(page, "leads-phone.png")
    # Every form field has a label a screen reader announces.
    unlabeled = page.evaluate(
        "[...document.querySelectorAll('input,select')].filter(e => !e.labels || !e.labels.length).length"
    )
    assert unlabeled == 0, f"{unlabeled} form fields without a label"
    ctx.close()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        admin_walk(page)
        sales_walk(page)
        ctx.close()
        mobile_walk(browser)
        browser.close()
        assert not errors, f"script errors in the page: {errors}"
    step("all steps passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as the test's
        print(f"[console] FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
