"""A one-file Django application for gunicorn (`django_app:application`): every view runs SQLite
work (a new in-memory connection per request) and answers with the worker's pid.

Routes: `users/<int:uid>` (a function view, `path`), `api/orders/<digits>` (a class-based view
under `include`, `re_path`).
"""
import os
import sqlite3

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import include, path, re_path  # noqa: E402
from django.views import View  # noqa: E402


def count_hits():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE hits (worker INTEGER)")
    conn.execute("INSERT INTO hits VALUES (?)", (os.getpid(),))
    (count,) = conn.execute("SELECT count(*) FROM hits WHERE worker > 0").fetchone()
    conn.close()
    return count


def user(request, uid):
    return HttpResponse(f"{os.getpid()} {count_hits()} user {uid}\n", content_type="text/plain")


class Orders(View):
    def get(self, request, oid):
        return HttpResponse(f"{os.getpid()} {count_hits()} order {oid}\n", content_type="text/plain")


urlpatterns = [
    path("users/<int:uid>", user),
    path("api/", include([re_path(r"^orders/(?P<oid>[0-9]+)$", Orders.as_view())])),
]

application = get_wsgi_application()
